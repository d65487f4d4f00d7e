"""Errors of the OpenAI-compatible service, in OpenAI's shape.

``{"error": {"message": str, "type": str, "param": str | null, "code": str | null}}`` with an
HTTP status that says what went wrong (spec "Where we go beyond Paddler", item 6): 400 for
an invalid request (naming the offending `param`), 501 when the cluster's mode forbids the
call, 502 when the agent was lost, 503 when the buffer is full or the balancer is stopping,
504 for timeouts. A 500 is left for what nobody expected. The balancer's error envelopes
and the agents' terminal generation errors map onto these here.
"""

from __future__ import annotations

import json

from quart import Response

from paddler_trio.protocol import (
    ChatTemplateError,
    ErrorDetails,
    GrammarIncompatibleWithThinking,
    GrammarInitializationFailed,
    GrammarSyntaxError,
    ImageDecodingFailed,
    ImageExceedsBatchSize,
    MultimodalNotSupported,
    SamplerError,
    TokenGenerationDisabled,
    TokenGenerationError,
    ToolSchemaInvalid,
)

# Seconds a client is asked to wait before retrying a 503 (the official clients honour Retry-After).
RETRY_AFTER_SECONDS = 1

_TYPE_BY_STATUS = {400: "invalid_request_error", 404: "invalid_request_error", 429: "rate_limit_error", 504: "timeout"}


class OpenAIError(Exception):
    """An error answer: raise it anywhere in a handler of the OpenAI service."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        error_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.error_type = error_type or _TYPE_BY_STATUS.get(status, "server_error")

    def body(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}

    def response(self) -> Response:
        response = Response(json.dumps(self.body()), status=self.status, content_type="application/json")
        if self.status == 503:
            response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response


def invalid_value(param: str, message: str, code: str = "invalid_value") -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def missing_parameter(param: str) -> OpenAIError:
    return OpenAIError(400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")


def unsupported(param: str, message: str) -> OpenAIError:
    return OpenAIError(400, message, param=param, code="unsupported_parameter")


def error_from_envelope(error: ErrorDetails) -> OpenAIError:
    """The balancer's (or an agent's) error envelope: its code is an HTTP status already (spec 2.5)."""
    status = error.code if 400 <= error.code <= 599 else 500
    return OpenAIError(status, error.description)


def error_from_generation_failure(
    failure: TokenGenerationError, *, grammar_param: str, messages_param: str
) -> OpenAIError:
    """An agent's terminal generation error; `*_param` name the request fields in this route's words."""
    message = failure.message if hasattr(failure, "message") else _image_too_large(failure)
    if isinstance(failure, (GrammarSyntaxError, GrammarInitializationFailed, GrammarIncompatibleWithThinking)):
        return invalid_value(grammar_param, message)
    if isinstance(failure, ToolSchemaInvalid):
        return invalid_value("tools", message)
    if isinstance(failure, (ChatTemplateError, ImageDecodingFailed, MultimodalNotSupported, ImageExceedsBatchSize)):
        return invalid_value(messages_param, message)
    if isinstance(failure, TokenGenerationDisabled):
        return OpenAIError(501, message, code="token_generation_disabled")
    if isinstance(failure, SamplerError):
        return _sampler_error(message, messages_param)
    return OpenAIError(500, message)


def _image_too_large(failure: TokenGenerationError) -> str:
    assert isinstance(failure, ImageExceedsBatchSize)
    return f"an image needs {failure.image_tokens} tokens but one batch holds {failure.n_batch} (n_batch)"


def _sampler_error(message: str, messages_param: str) -> OpenAIError:
    # The agent reports these conditions as SamplerError text only (see engine/scheduler.py).
    if message.startswith("the prompt has "):
        return OpenAIError(400, message, param=messages_param, code="context_length_exceeded")
    if message.startswith("the prompt is empty") or message.startswith("failed to tokenize prompt"):
        return invalid_value(messages_param, message)
    if message.startswith("no available sequence slots") or "KV cache pressure" in message:
        return OpenAIError(503, message, code="agent_overloaded")
    return OpenAIError(500, message)
