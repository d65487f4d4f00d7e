"""The two error bodies the balancer's services answer with: the native services'
`{"error": "<description>"}` and the OpenAI service's `{"error": {message, type, param, code}}`."""

from __future__ import annotations

import json
from typing import Protocol

from quart import Response

_OPENAI_TYPE_BY_STATUS = {401: "invalid_request_error", 429: "rate_limit_error", 504: "timeout"}


class ErrorShape(Protocol):
    def __call__(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> Response: ...


def native_error_body(message: str) -> str:
    return json.dumps({"error": message})


def native_error(status: int, message: str, *, param: str | None = None, code: str | None = None) -> Response:
    return Response(native_error_body(message), status=status, content_type="application/json")


def openai_error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> str:
    body = {
        "error": {
            "message": message,
            "type": _OPENAI_TYPE_BY_STATUS.get(status, "invalid_request_error" if status < 500 else "server_error"),
            "param": param,
            "code": code,
        }
    }
    return json.dumps(body)


def openai_error(status: int, message: str, *, param: str | None = None, code: str | None = None) -> Response:
    return Response(openai_error_body(status, message, param=param, code=code), status=status, content_type="application/json")
