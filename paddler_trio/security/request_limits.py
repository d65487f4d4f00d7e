"""Per-request limits of the balancer's HTTP services, checked before a route runs:
the body size (Quart's `MAX_CONTENT_LENGTH`, a 413) and the number of tokens a request may
ask for (a 400 naming the field and the limit). Inference WebSocket requests are checked by
the socket session itself (`proxy/inference_socket.py`)."""

from __future__ import annotations

import json
import logging

from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import RequestEntityTooLarge

from paddler_trio.security.error_shapes import ErrorShape, native_error
from paddler_trio.security.refusal_log import RefusalLog

_logger = logging.getLogger(__name__)

# Where the native and the OpenAI routes take the number of tokens to generate.
MAX_TOKENS_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def max_tokens_problem(field: str, value: int, limit: int) -> str:
    return f"{field} is {value}, beyond this balancer's limit of {limit} (--max-tokens-limit)"


def limit_requests(
    app: QuartTrio,
    *,
    service: str,
    max_body_bytes: int,
    max_tokens_limit: int,
    error_shape: ErrorShape = native_error,
) -> None:
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes
    refusals = RefusalLog(_logger)

    @app.errorhandler(RequestEntityTooLarge)
    async def body_too_large(_: RequestEntityTooLarge) -> Response:
        refusals.refused(
            request.remote_addr or "unknown client", "body size", "%s service refused %s: body too large", service, request.path
        )
        return error_shape(
            413,
            f"Request body is larger than this balancer's limit of {_size(max_body_bytes)} (--max-request-body-bytes)",
            code="request_too_large",
        )

    @app.before_request
    async def check_max_tokens() -> Response | None:
        if request.method != "POST":
            return None
        try:
            body = json.loads(await request.get_data(as_text=False))
        except ValueError:
            return None  # the route explains what is wrong with it
        if not isinstance(body, dict):
            return None
        for field in MAX_TOKENS_FIELDS:
            value = body.get(field)
            if isinstance(value, int) and not isinstance(value, bool) and value > max_tokens_limit:
                refusals.refused(
                    request.remote_addr or "unknown client",
                    "max tokens",
                    "%s service refused %s: %s %d over the limit",
                    service,
                    request.path,
                    field,
                    value,
                )
                return error_shape(400, max_tokens_problem(field, value, max_tokens_limit), param=field, code="max_tokens_limit")
        return None


def _size(byte_count: int) -> str:
    mebibytes, rest = divmod(byte_count, 1024 * 1024)
    return f"{byte_count} bytes" + (f" ({mebibytes} MiB)" if mebibytes and not rest else "")
