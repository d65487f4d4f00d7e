"""Server-sent events as the OpenAI routes stream them (`text/event-stream`, `data:` lines,
optionally named with `event:`; chat and completions streams end with `data: [DONE]`)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from quart import Response

SSE_DONE = b"data: [DONE]\n\n"


def _json(payload: Any) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def sse_data(payload: Any) -> bytes:
    return f"data: {_json(payload)}\n\n".encode()


def sse_event(name: str, payload: Any) -> bytes:
    return f"event: {name}\ndata: {_json(payload)}\n\n".encode()


def sse_response(body: AsyncIterator[bytes]) -> Response:
    response = Response(body, status=200, content_type="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.timeout = None
    return response
