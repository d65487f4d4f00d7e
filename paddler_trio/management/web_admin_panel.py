"""The web admin panel service (spec 8.4): static files and one HTML shell.

`GET /static/<path>` serves `paddler_trio/web/`, `GET /favicon.ico` the icon, and every other
`GET /<anything>` the HTML shell, which carries the balancer's configuration as `data-*`
attributes on `<body>`. The panel's JavaScript talks to the management and inference
services directly from the browser (their CORS origins include this service's address).
"""

from __future__ import annotations

import html
from pathlib import Path

import attrs
from quart import Response, send_from_directory
from quart_trio import QuartTrio

from paddler_trio.balancer_config import BalancerConfig

WEB_DIRECTORY = Path(__file__).resolve().parent.parent / "web"


@attrs.frozen(kw_only=True)
class WebAdminPanelSettings:
    """What the panel shows and whom it talks to; addresses are `host:port` as the browser reaches them."""

    inference_addr: str
    management_addr: str
    compat_openai_addr: str | None
    buffered_request_timeout_ms: int
    max_buffered_requests: int
    statsd_addr: str | None
    statsd_prefix: str
    statsd_reporting_interval_ms: int

    @classmethod
    def from_config(
        cls, config: BalancerConfig, *, inference_addr: str, management_addr: str, compat_openai_addr: str | None
    ) -> WebAdminPanelSettings:
        return cls(
            inference_addr=inference_addr,
            management_addr=management_addr,
            compat_openai_addr=compat_openai_addr,
            buffered_request_timeout_ms=round(config.buffered_request_timeout * 1000),
            max_buffered_requests=config.max_buffered_requests,
            statsd_addr=None if config.statsd_addr is None else config.statsd_addr.text,
            statsd_prefix=config.statsd_prefix,
            statsd_reporting_interval_ms=round(config.statsd_reporting_interval * 1000),
        )

    def data_attributes(self) -> str:
        values = {
            "inference-addr": self.inference_addr,
            "management-addr": self.management_addr,
            "compat-openai-addr": self.compat_openai_addr or "",
            "buffered-request-timeout": str(self.buffered_request_timeout_ms),
            "max-buffered-requests": str(self.max_buffered_requests),
            "statsd-addr": self.statsd_addr or "",
            "statsd-prefix": self.statsd_prefix,
            "statsd-reporting-interval": str(self.statsd_reporting_interval_ms),
        }
        return " ".join(f'data-{name}="{html.escape(value, quote=True)}"' for name, value in values.items())


def html_shell(settings: WebAdminPanelSettings) -> str:
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Paddler admin panel</title>
<link rel="icon" href="/favicon.ico">
<link rel="stylesheet" href="/static/panel.css">
<script type="module" src="/static/app.js"></script>
</head>
<body {settings.data_attributes()}>
<noscript>The Paddler admin panel needs JavaScript.</noscript>
</body>
</html>
"""


def create_web_admin_panel_app(settings: WebAdminPanelSettings) -> QuartTrio:
    # Our own /static route, not Quart's default static folder (which would shadow it).
    app = QuartTrio("paddler-web-admin-panel", static_folder=None)
    shell = html_shell(settings)

    @app.get("/static/<path:path>")
    async def static_file(path: str) -> Response:
        response = await send_from_directory(WEB_DIRECTORY, path)
        response.headers["Cache-Control"] = "no-cache"
        return response

    @app.get("/favicon.ico")
    async def favicon() -> Response:
        return await send_from_directory(WEB_DIRECTORY, "favicon.svg", mimetype="image/svg+xml")

    @app.get("/", defaults={"anything": ""})
    @app.get("/<path:anything>")
    async def page(anything: str) -> Response:
        return Response(shell, content_type="text/html; charset=utf-8")

    return app
