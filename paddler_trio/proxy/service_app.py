"""What the balancer's HTTP services share: a Quart-Trio app with streaming-safe settings,
Paddler's error bodies, and Paddler's CORS policy (spec 1.2).

Errors: what Paddler itself answers (spec 2.4, a management route's 404/502/504, an unknown
route, a refused CORS preflight), we answer as it does: the description is the whole body, as
plain text (actix-web's `ErrorBadRequest("...")`). Paddler's clients put that body into their
errors' message, and its tests compare that message whole. Only what Paddler does not have
(API keys, `--max-tokens-limit`, `--max-request-body-bytes`, see `security/`) answers with
`{"error": "<description>"}`.

CORS: for an allowed `Origin` every response carries `Access-Control-Allow-Origin`; a
preflight (`OPTIONS` with `Access-Control-Request-Method`) is answered directly with
methods DELETE/GET/OPTIONS/POST/PUT, headers Accept/Authorization/Content-Type and a
max-age of 3600 s, or 400 when the origin is not allowed. Requests from other origins
are served without CORS headers (the browser then refuses them).
"""

from __future__ import annotations

from collections.abc import Iterable

from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

MAX_REQUEST_BODY_BYTES = 50 * 1024 * 1024

_ALLOWED_METHODS = "DELETE, GET, OPTIONS, POST, PUT"
_ALLOWED_HEADERS = "Accept, Authorization, Content-Type"
_PREFLIGHT_MAX_AGE = "3600"


PLAIN_TEXT = "text/plain; charset=utf-8"


def plain_text_error(status: int, description: str) -> Response:
    """The description as the whole body, as Paddler answers (see the module docstring)."""
    return Response(description, status=status, content_type=PLAIN_TEXT)


def create_service_app(name: str, cors_allowed_origins: Iterable[str]) -> QuartTrio:
    app = QuartTrio(name)
    # Streams (NDJSON, SSE) last as long as they last; Quart would cut them after 60 s.
    app.config["RESPONSE_TIMEOUT"] = None
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BODY_BYTES
    origins = frozenset(cors_allowed_origins)

    @app.errorhandler(RequestEntityTooLarge)
    async def body_too_large(_: RequestEntityTooLarge) -> Response:
        return plain_text_error(413, f"Request body is larger than the {MAX_REQUEST_BODY_BYTES // (1024 * 1024)} MiB limit")

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        return plain_text_error(error.code or 500, error.description or error.name)

    @app.before_request
    async def answer_preflight() -> Response | None:
        if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
            return None
        origin = request.headers.get("Origin")
        if origin not in origins:
            return plain_text_error(400, "Origin is not allowed to make this request")
        response = Response("", status=200)
        response.headers["Access-Control-Allow-Methods"] = _ALLOWED_METHODS
        response.headers["Access-Control-Allow-Headers"] = _ALLOWED_HEADERS
        response.headers["Access-Control-Max-Age"] = _PREFLIGHT_MAX_AGE
        return response

    @app.after_request
    async def add_cors_headers(response: Response) -> Response:
        origin = request.headers.get("Origin")
        if origin is not None and origin in origins:
            response.headers["Access-Control-Allow-Origin"] = origin
        response.vary.add("Origin")
        return response

    return app
