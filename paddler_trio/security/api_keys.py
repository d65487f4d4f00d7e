"""Bearer-key authentication for the balancer's services (`require_bearer_key`).

Every route of an app is checked against its key list, except `GET /health`, the
`/openapi.json` description and CORS preflights (`OPTIONS`). HTTP requests (NDJSON, SSE, JSON) must send
`Authorization: Bearer <key>`. WebSocket upgrades may send the same header or, because
browsers cannot set headers on a WebSocket, either a `Sec-WebSocket-Protocol` value
`bearer.<key>` or an `api_key=<key>` query parameter. A refused upgrade gets the HTTP 401
before the socket is accepted. Keys are compared in constant time against every
configured key; an empty key list leaves the app open (Paddler's behaviour).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable, Mapping

import attrs
from quart import Response, request, websocket
from quart_trio import QuartTrio

from paddler_trio.security.error_shapes import ErrorShape, native_error
from paddler_trio.security.refusal_log import RefusalLog

_logger = logging.getLogger(__name__)

BEARER_PREFIX = "Bearer "
WEBSOCKET_SUBPROTOCOL_PREFIX = "bearer."
WEBSOCKET_QUERY_PARAMETER = "api_key"
OPEN_PATHS = frozenset({"/health", "/openapi.json"})


@attrs.frozen
class ApiKeys:
    """The keys one service accepts; none means the service is open."""

    keys: tuple[bytes, ...] = attrs.field(default=(), repr=False)

    @classmethod
    def of(cls, keys: Iterable[str]) -> ApiKeys:
        return cls(tuple(key.encode() for key in keys))

    @property
    def required(self) -> bool:
        return bool(self.keys)

    def admits(self, authorization: str | None) -> bool:
        """Whether a request with this `Authorization` header may pass: no key is required, or
        the header is a Bearer one of the keys."""
        if not self.required:
            return True
        presented = bearer_key(authorization)
        return presented is not None and self.accepts(presented)

    def accepts(self, presented: str) -> bool:
        candidate = presented.encode()
        # Every key is compared, so the time taken does not tell which one nearly matched.
        accepted = False
        for key in self.keys:
            accepted |= hmac.compare_digest(key, candidate)
        return accepted


MISSING_KEY = "Missing API key: send 'Authorization: Bearer <key>'"
MISSING_WEBSOCKET_KEY = (
    "Missing API key: send 'Authorization: Bearer <key>', a Sec-WebSocket-Protocol value "
    f"'{WEBSOCKET_SUBPROTOCOL_PREFIX}<key>' or the query parameter '{WEBSOCKET_QUERY_PARAMETER}=<key>'"
)
INVALID_KEY = "Invalid API key"


@attrs.frozen
class KeyRefusal:
    reason: str  # for the log
    description: str  # for the client


def refusal_of_request(keys: ApiKeys, authorization: str | None) -> KeyRefusal | None:
    """Why an HTTP request with this `Authorization` header is refused, if it is."""
    if not keys.required:
        return None
    presented = bearer_key(authorization)
    if presented is None:
        return KeyRefusal("missing key", MISSING_KEY)
    return None if keys.accepts(presented) else KeyRefusal("wrong key", INVALID_KEY)


@attrs.frozen
class WebSocketKeyCheck:
    refusal: KeyRefusal | None
    # The subprotocol to accept the socket with (when the key came as one), else None.
    subprotocol: str | None = None


def check_websocket_key(
    keys: ApiKeys, authorization: str | None, subprotocols: list[str], query_key: str | None
) -> WebSocketKeyCheck:
    """Judge an upgrade's key, wherever it came (see the module docstring)."""
    if not keys.required:
        return WebSocketKeyCheck(None)
    header_key = bearer_key(authorization)
    subprotocol_key = next(
        (offered.removeprefix(WEBSOCKET_SUBPROTOCOL_PREFIX) for offered in subprotocols if offered.startswith(WEBSOCKET_SUBPROTOCOL_PREFIX)),
        None,
    )
    presented = header_key or subprotocol_key or query_key
    if presented is None:
        return WebSocketKeyCheck(KeyRefusal("missing key", MISSING_WEBSOCKET_KEY))
    if not keys.accepts(presented):
        return WebSocketKeyCheck(KeyRefusal("wrong key", INVALID_KEY))
    if header_key is None and subprotocol_key is not None:
        # A browser fails a socket whose server selects none of the offered subprotocols:
        # select the first other one offered, else the bearer one itself.
        return WebSocketKeyCheck(None, next((p for p in subprotocols if not p.startswith(WEBSOCKET_SUBPROTOCOL_PREFIX)), subprotocols[0]))
    return WebSocketKeyCheck(None)


def require_bearer_key(
    app: QuartTrio,
    keys: ApiKeys,
    *,
    service: str,
    error_shape: ErrorShape = native_error,
    keys_by_path_prefix: Mapping[str, ApiKeys] | None = None,
) -> None:
    """Check every request and WebSocket upgrade of `app` (see the module docstring).

    `keys_by_path_prefix` gives some routes their own keys instead (the agent socket takes
    the agent secret, not the management keys); an empty `ApiKeys` there leaves them open.
    """
    overrides = dict(keys_by_path_prefix or {})
    refusals = RefusalLog(_logger)

    def keys_for(path: str) -> ApiKeys:
        for prefix, route_keys in overrides.items():
            if path.startswith(prefix):
                return route_keys
        return keys

    def refuse(path: str, client: str | None, refusal: KeyRefusal) -> Response:
        refusals.refused(client or "unknown client", refusal.reason, "%s service refused %s: %s", service, path, refusal.reason)
        response = error_shape(401, refusal.description, code="invalid_api_key")
        response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.before_request
    async def check_request() -> Response | None:
        if request.method == "OPTIONS" or request.path in OPEN_PATHS:
            return None
        refusal = refusal_of_request(keys_for(request.path), request.headers.get("Authorization"))
        return None if refusal is None else refuse(request.path, request.remote_addr, refusal)

    @app.before_websocket
    async def check_websocket() -> Response | None:
        check = check_websocket_key(
            keys_for(websocket.path),
            websocket.headers.get("Authorization"),
            list(websocket.requested_subprotocols),
            websocket.args.get(WEBSOCKET_QUERY_PARAMETER),
        )
        if check.refusal is not None:
            return refuse(websocket.path, websocket.remote_addr, check.refusal)
        if check.subprotocol is not None:
            await websocket.accept(subprotocol=check.subprotocol)
        return None


def bearer_key(authorization: str | None) -> str | None:
    if authorization is None or authorization[: len(BEARER_PREFIX)].lower() != BEARER_PREFIX.lower():
        return None
    key = authorization[len(BEARER_PREFIX) :].strip()
    return key or None
