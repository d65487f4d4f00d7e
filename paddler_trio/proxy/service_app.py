"""What the balancer's HTTP services share: a Quart-Trio app with streaming-safe settings,
Paddler's error bodies, and Paddler's CORS policy (spec 1.2).

Errors: what Paddler itself answers (spec 2.4, a management route's 404/502/504, an unknown
route, a refused CORS preflight), we answer as it does: the description is the whole body, as
plain text (actix-web's `ErrorBadRequest("...")`). Paddler's clients put that body into their
errors' message, and its tests compare that message whole. Only what Paddler does not have
(API keys, `--max-tokens-limit`, `--max-request-body-bytes`, see `security/`) answers with
`{"error": "<description>"}`.

CORS: Paddler's policy (`cors_policy.py`), applied in the app's request hooks.
"""

from __future__ import annotations

from collections.abc import Iterable

from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from paddler_trio.proxy.cors_policy import ORIGIN_NOT_ALLOWED, PREFLIGHT_HEADERS, CorsPolicy

MAX_REQUEST_BODY_BYTES = 50 * 1024 * 1024


PLAIN_TEXT = "text/plain; charset=utf-8"


def plain_text_error(status: int, description: str) -> Response:
    """The description as the whole body, as Paddler answers (see the module docstring)."""
    return Response(description, status=status, content_type=PLAIN_TEXT)


def create_service_app(name: str, cors_allowed_origins: Iterable[str]) -> QuartTrio:
    app = QuartTrio(name)
    # Streams (NDJSON, SSE) last as long as they last; Quart would cut them after 60 s.
    app.config["RESPONSE_TIMEOUT"] = None
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BODY_BYTES
    cors = CorsPolicy.of(cors_allowed_origins)

    @app.errorhandler(RequestEntityTooLarge)
    async def body_too_large(_: RequestEntityTooLarge) -> Response:
        return plain_text_error(413, f"Request body is larger than the {MAX_REQUEST_BODY_BYTES // (1024 * 1024)} MiB limit")

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        return plain_text_error(error.code or 500, error.description or error.name)

    @app.before_request
    async def answer_preflight() -> Response | None:
        if not cors.is_preflight(request.method, request.headers.get("Access-Control-Request-Method")):
            return None
        if not cors.allows(request.headers.get("Origin")):
            return plain_text_error(400, ORIGIN_NOT_ALLOWED)
        return Response("", status=200, headers=dict(PREFLIGHT_HEADERS))

    @app.after_request
    async def add_cors_headers(response: Response) -> Response:
        response.headers.update(cors.allow_origin_header(request.headers.get("Origin")))
        response.vary.add("Origin")
        return response

    return app
