"""Per-request limits of the balancer's HTTP services, checked before a route runs:
the body size (a 413) and the number of tokens a request may ask for (a 400 naming the field
and the limit). `limit_requests` applies them to a Quart app; the inference port checks the
same with `body_too_large_description` and `max_tokens_exceeded` (`proxy/inference_routes.py`). Inference WebSocket requests are checked by
the socket session itself (`proxy/inference_socket.py`)."""

from __future__ import annotations

import json
import logging

import attrs
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


def body_too_large_description(max_body_bytes: int) -> str:
    return f"Request body is larger than this balancer's limit of {_size(max_body_bytes)} (--max-request-body-bytes)"


@attrs.frozen
class MaxTokensExceeded:
    field: str
    value: int
    limit: int

    @property
    def description(self) -> str:
        return max_tokens_problem(self.field, self.value, self.limit)


def max_tokens_exceeded(body: bytes, max_tokens_limit: int) -> MaxTokensExceeded | None:
    """The field of a JSON request body that asks for more tokens than the limit, if one does
    (a body that is not a JSON object is left for the route to explain)."""
    try:
        fields = json.loads(body)
    except ValueError:
        return None
    if not isinstance(fields, dict):
        return None
    for field in MAX_TOKENS_FIELDS:
        value = fields.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value > max_tokens_limit:
            return MaxTokensExceeded(field, value, max_tokens_limit)
    return None


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
        return error_shape(413, body_too_large_description(max_body_bytes), code="request_too_large")

    @app.before_request
    async def check_max_tokens() -> Response | None:
        if request.method != "POST":
            return None
        exceeded = max_tokens_exceeded(await request.get_data(as_text=False), max_tokens_limit)
        if exceeded is None:
            return None
        refusals.refused(
            request.remote_addr or "unknown client",
            "max tokens",
            "%s service refused %s: %s %d over the limit",
            service,
            request.path,
            exceeded.field,
            exceeded.value,
        )
        return error_shape(400, exceeded.description, param=exceeded.field, code="max_tokens_limit")


def _size(byte_count: int) -> str:
    mebibytes, rest = divmod(byte_count, 1024 * 1024)
    return f"{byte_count} bytes" + (f" ({mebibytes} MiB)" if mebibytes and not rest else "")
