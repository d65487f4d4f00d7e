"""What a generation request streams back: tokens, tool-call events, then one terminal result.

Wire form (externally tagged): ``{"ContentToken": "Hello"}``, ``{"ToolCallParsed": [...]}``,
``{"Done": {"usage": {...}}}``, ``{"SamplerError": "message"}``,
``{"ImageExceedsBatchSize": {"image_tokens": 1200, "n_batch": 512}}``.
"""

from __future__ import annotations

from typing import Any, Union, get_args

import attrs

from paddler_trio.protocol.token_usage import TokenUsage


@attrs.frozen
class ContentToken:
    """A piece of the answer."""

    text: str


@attrs.frozen
class ReasoningToken:
    """A piece of the model's thinking."""

    text: str


@attrs.frozen
class ToolCallToken:
    """A raw piece of a tool call being generated."""

    text: str


@attrs.frozen
class UndeterminableToken:
    """A piece whose kind the output parser could not decide."""

    text: str


@attrs.frozen
class ValidJsonArguments:
    """Tool-call arguments that parsed as JSON: ``{"ValidJson": <any JSON>}``."""

    value: Any


@attrs.frozen
class InvalidJsonArguments:
    """Tool-call arguments that did not parse as JSON: ``{"InvalidJson": "<text>"}``."""

    text: str


ToolCallArguments = Union[ValidJsonArguments, InvalidJsonArguments]


@attrs.frozen
class ParsedToolCall:
    """One tool call recognised in the output."""

    id: str
    name: str
    arguments: ToolCallArguments


@attrs.frozen
class ToolCallParsed:
    """The tool calls of the answer, parsed: ``{"ToolCallParsed": [ParsedToolCall, ...]}``."""

    calls: tuple[ParsedToolCall, ...]


@attrs.frozen
class ToolCallParseFailed:
    """The output looked like a tool call but could not be parsed."""

    message: str


@attrs.frozen
class ToolCallValidationFailed:
    """Parsed tool calls that do not match their tools' schemas: ``{"ToolCallValidationFailed": [str, ...]}``."""

    messages: tuple[str, ...]


@attrs.frozen
class UnrecognizedToolCallFormat:
    """Tool-call output in a format the parser does not know."""

    text: str
    ffi_error_message: str


@attrs.frozen
class GenerationDone:
    """The generation ended normally: ``{"Done": {"usage": {...}}}``."""

    usage: TokenUsage


@attrs.frozen
class ChatTemplateError:
    """The chat template failed to render the conversation."""

    message: str


@attrs.frozen
class DetokenizationFailed:
    """A generated token could not be turned back into text."""

    message: str


@attrs.frozen
class GrammarIncompatibleWithThinking:
    """A grammar was requested together with thinking."""

    message: str


@attrs.frozen
class GrammarInitializationFailed:
    """llama.cpp could not build the grammar sampler."""

    message: str


@attrs.frozen
class GrammarRejectedModelOutput:
    """The grammar left no token the model could produce."""

    message: str


@attrs.frozen
class GrammarSyntaxError:
    """The grammar (or the JSON schema it came from) is malformed."""

    message: str


@attrs.frozen
class ImageDecodingFailed:
    """An image part could not be fetched or decoded."""

    message: str


@attrs.frozen
class ImageExceedsBatchSize:
    """An image needs more tokens than one decode batch holds."""

    image_tokens: int
    n_batch: int


@attrs.frozen
class MultimodalNotSupported:
    """Images were sent to a model without a multimodal projection."""

    message: str


@attrs.frozen
class SamplerError:
    """Sampling failed (also used for a KV cache that cannot hold the sequence)."""

    message: str


@attrs.frozen
class TokenGenerationDisabled:
    """The cluster is in embeddings mode."""

    message: str


@attrs.frozen
class ToolSchemaInvalid:
    """A tool's parameter schema is unusable."""

    message: str


TokenGenerationError = Union[
    ChatTemplateError,
    DetokenizationFailed,
    GrammarIncompatibleWithThinking,
    GrammarInitializationFailed,
    GrammarRejectedModelOutput,
    GrammarSyntaxError,
    ImageDecodingFailed,
    ImageExceedsBatchSize,
    MultimodalNotSupported,
    SamplerError,
    TokenGenerationDisabled,
    ToolSchemaInvalid,
]

GeneratedTokenResult = Union[
    ContentToken,
    ReasoningToken,
    ToolCallToken,
    UndeterminableToken,
    ToolCallParsed,
    ToolCallParseFailed,
    ToolCallValidationFailed,
    UnrecognizedToolCallFormat,
    GenerationDone,
    TokenGenerationError,
]

_TERMINAL_TYPES: tuple[type, ...] = (GenerationDone, *get_args(TokenGenerationError))


def is_terminal(result: object) -> bool:
    """True for a ``GeneratedTokenResult`` that ends its request's stream: ``Done`` and every error."""
    return isinstance(result, _TERMINAL_TYPES)
