"""The JSON-RPC-like envelopes shared by the inference socket, the NDJSON routes and the agent socket.

An envelope is always a variant of a socket's message union, so it serialises with its tag:
``RequestEnvelope`` -> ``{"Request": {"id", "request"}}``,
``ResponseEnvelope`` -> ``{"Response": {"generated_by", "request_id", "response"}}``,
``ErrorEnvelope`` -> ``{"Error": {"request_id", "error": {"code", "description"}}}``.

The type parameter names the payload union a socket accepts (e.g. ``RequestEnvelope[InferenceRequest]``);
the converter adds the payload's own tag on the wire: ``{"ContinueFromRawPrompt": {...}}`` for a
``ContinueFromRawPromptParams``, ``{"GeneratedToken": {"ContentToken": "Hi"}}`` for a ``ContentToken``,
``{"Embedding": "Done"}`` for an ``EmbeddingDone``.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import attrs

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")


@attrs.frozen
class RequestEnvelope(Generic[RequestT]):
    """``{"Request": {"id": str, "request": <request payload>}}``."""

    id: str
    request: RequestT


@attrs.frozen
class ResponseEnvelope(Generic[ResponseT]):
    """``{"Response": {"generated_by": str | null, "request_id": str, "response": <response payload>}}``.

    Agents send ``generated_by`` null; the balancer fills in the agent's name when forwarding.
    """

    generated_by: str | None
    request_id: str
    response: ResponseT


@attrs.frozen
class ErrorDetails:
    """``{"code": i32, "description": str}`` (HTTP-like codes: 400, 500, 502, 503, 504)."""

    code: int
    description: str


@attrs.frozen
class ErrorEnvelope:
    """``{"Error": {"request_id": str, "error": ErrorDetails}}``."""

    request_id: str
    error: ErrorDetails
