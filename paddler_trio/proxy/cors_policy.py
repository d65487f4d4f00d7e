"""Paddler's CORS policy (spec 1.2), for Quart's apps (`service_app.py`) and the inference port
(`inference_routes.py`) alike.

For an allowed `Origin` every response carries `Access-Control-Allow-Origin`; a preflight
(`OPTIONS` with `Access-Control-Request-Method`) is answered directly with methods
DELETE/GET/OPTIONS/POST/PUT, headers Accept/Authorization/Content-Type and a max-age of
3600 s, or 400 when the origin is not allowed. Requests from other origins are served
without CORS headers (the browser then refuses them).
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

PREFLIGHT_HEADERS = (
    ("Access-Control-Allow-Methods", "DELETE, GET, OPTIONS, POST, PUT"),
    ("Access-Control-Allow-Headers", "Accept, Authorization, Content-Type"),
    ("Access-Control-Max-Age", "3600"),
)
ORIGIN_NOT_ALLOWED = "Origin is not allowed to make this request"


@attrs.frozen
class CorsPolicy:
    allowed_origins: frozenset[str]

    @classmethod
    def of(cls, origins: Iterable[str]) -> CorsPolicy:
        return cls(frozenset(origins))

    @staticmethod
    def is_preflight(method: str, access_control_request_method: str | None) -> bool:
        return method == "OPTIONS" and access_control_request_method is not None

    def allows(self, origin: str | None) -> bool:
        return origin is not None and origin in self.allowed_origins

    def allow_origin_header(self, origin: str | None) -> list[tuple[str, str]]:
        """What a response to a request from `origin` carries besides `Vary: Origin`."""
        return [("Access-Control-Allow-Origin", origin)] if origin is not None and self.allows(origin) else []
