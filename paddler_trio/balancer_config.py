"""Everything `paddler balancer` is told on its command line (spec 1.2), as one value."""

from __future__ import annotations

import attrs

from paddler_trio.cli_values import SocketAddress


@attrs.frozen(kw_only=True)
class BalancerConfig:
    inference_addr: SocketAddress
    management_addr: SocketAddress
    compat_openai_addr: SocketAddress | None = None
    web_admin_panel_addr: SocketAddress | None = None
    # Durations in seconds (given in integer milliseconds on the command line).
    buffered_request_timeout: float = 10.0
    inference_item_timeout: float = 30.0
    max_buffered_requests: int = 30
    inference_cors_allowed_hosts: tuple[str, ...] = ()
    management_cors_allowed_hosts: tuple[str, ...] = ()
    state_database: str = "memory://"
    statsd_addr: SocketAddress | None = None
    statsd_prefix: str = "paddler_"
    statsd_reporting_interval: float = 10.0

    def _admin_panel_origins(self) -> tuple[str, ...]:
        return () if self.web_admin_panel_addr is None else (f"http://{self.web_admin_panel_addr.text}",)

    @property
    def inference_cors_origins(self) -> list[str]:
        """The configured origins, plus the admin panel's (it talks to this service from the browser)."""
        return [*self.inference_cors_allowed_hosts, *self._admin_panel_origins()]

    @property
    def management_cors_origins(self) -> list[str]:
        return [*self.management_cors_allowed_hosts, *self._admin_panel_origins()]
