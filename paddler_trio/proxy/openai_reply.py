"""One generated reply as the OpenAI routes see it: content, reasoning, tool calls, usage and
why it finished, assembled from the agent's token results.

`ReplyAssembler.add` turns each result into the pieces a stream sends on (or nothing), and
keeps the whole for a non-streaming body. A tool call the agent could not parse is not an
error here: its raw text becomes content, so the client still sees what the model wrote.
A terminal generation error raises the matching `OpenAIError`.

`collect` reads a whole reply (non-streaming answers); a stream reads `first_pieces_of` it
before answering (so its errors still get their own HTTP status), then the `rest_of` it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Literal, Union

import attrs

from paddler_trio.proxy.openai_dispatch import AgentReplies
from paddler_trio.proxy.openai_errors import OpenAIError, error_from_generation_failure
from paddler_trio.protocol import (
    ContentToken,
    GenerationDone,
    InvalidJsonArguments,
    ParsedToolCall,
    ReasoningToken,
    TokenUsage,
    ToolCallParsed,
    ToolCallParseFailed,
    ToolCallToken,
    ToolCallValidationFailed,
    UndeterminableToken,
    UnrecognizedToolCallFormat,
    is_terminal,
)

_logger = logging.getLogger(__name__)

FinishReason = Literal["stop", "length", "tool_calls"]


@attrs.frozen
class ToolCall:
    """A parsed tool call with its arguments as JSON text, as OpenAI returns them."""

    id: str
    name: str
    arguments: str

    @classmethod
    def of(cls, call: ParsedToolCall) -> ToolCall:
        if isinstance(call.arguments, InvalidJsonArguments):
            arguments = call.arguments.text
        else:
            arguments = json.dumps(call.arguments.value, ensure_ascii=False)
        return cls(id=call.id, name=call.name, arguments=arguments)


@attrs.frozen
class ContentPiece:
    text: str


@attrs.frozen
class ReasoningPiece:
    text: str


@attrs.frozen
class ToolCallsPiece:
    calls: tuple[ToolCall, ...]
    first_index: int


ReplyPiece = Union[ContentPiece, ReasoningPiece, ToolCallsPiece]


class ReplyAssembler:
    def __init__(self, *, max_tokens: int, grammar_param: str, messages_param: str) -> None:
        self._max_tokens = max_tokens
        self._grammar_param = grammar_param
        self._messages_param = messages_param
        self._content: list[str] = []
        self._reasoning: list[str] = []
        self._raw_tool_call: list[str] = []
        self.tool_calls: list[ToolCall] = []
        self.usage: TokenUsage | None = None

    @property
    def done(self) -> bool:
        return self.usage is not None

    @property
    def content(self) -> str:
        return "".join(self._content)

    @property
    def reasoning(self) -> str:
        return "".join(self._reasoning)

    @property
    def finish_reason(self) -> FinishReason:
        if self.tool_calls:
            return "tool_calls"
        usage = self.usage
        # The engine counts every token outside tool-call sections against max_tokens.
        if (
            usage is not None
            and usage.content_tokens + usage.reasoning_tokens + usage.undeterminable_tokens >= self._max_tokens
        ):
            return "length"
        return "stop"

    def add(self, result: object) -> list[ReplyPiece]:
        if isinstance(result, (ContentToken, UndeterminableToken)):
            return self._content_piece(result.text)
        if isinstance(result, ReasoningToken):
            self._reasoning.append(result.text)
            return [ReasoningPiece(result.text)]
        if isinstance(result, ToolCallToken):
            self._raw_tool_call.append(result.text)
            return []
        if isinstance(result, ToolCallParsed):
            self._raw_tool_call.clear()
            calls = tuple(ToolCall.of(call) for call in result.calls)
            piece = ToolCallsPiece(calls, first_index=len(self.tool_calls))
            self.tool_calls.extend(calls)
            return [piece]
        if isinstance(result, ToolCallValidationFailed):
            _logger.info("tool calls returned although they do not match their schemas: %s", "; ".join(result.messages))
            return []
        if isinstance(result, (ToolCallParseFailed, UnrecognizedToolCallFormat)):
            _logger.info("a tool call could not be parsed; returned as content: %s", result)
            if not self._raw_tool_call and isinstance(result, UnrecognizedToolCallFormat):
                self._raw_tool_call.append(result.text)
            return self._raw_tool_call_as_content()
        if isinstance(result, GenerationDone):
            pieces = self._raw_tool_call_as_content()
            self.usage = result.usage
            return pieces
        if is_terminal(result):
            raise error_from_generation_failure(
                result,  # type: ignore[arg-type]
                grammar_param=self._grammar_param,
                messages_param=self._messages_param,
            )
        raise OpenAIError(502, f"the agent sent a result that is not a token generation result: {result!r}")

    def _content_piece(self, text: str) -> list[ReplyPiece]:
        if not text:
            return []
        self._content.append(text)
        return [ContentPiece(text)]

    def _raw_tool_call_as_content(self) -> list[ReplyPiece]:
        raw = "".join(self._raw_tool_call)
        self._raw_tool_call.clear()
        return self._content_piece(raw)


async def collect(replies: AgentReplies, reply: ReplyAssembler) -> None:
    """Read a whole reply (for a non-streaming answer)."""
    try:
        async for result in replies:
            reply.add(result)
            if reply.done:
                return
    finally:
        replies.close()
    raise OpenAIError(502, "The agent ended the reply before finishing it.")


async def first_pieces_of(replies: AgentReplies, reply: ReplyAssembler) -> list[ReplyPiece]:
    """The pieces of the first result, read before a stream is answered (its errors get their own status)."""
    first = await replies.first()
    try:
        return reply.add(first)
    except BaseException:
        replies.close()
        raise


async def rest_of(replies: AgentReplies, reply: ReplyAssembler) -> AsyncIterator[ReplyPiece]:
    """The pieces after the first, until the reply is done (errors raise `OpenAIError`)."""
    while not reply.done:
        try:
            result = await replies.__anext__()
        except StopAsyncIteration:
            raise OpenAIError(502, "The agent ended the reply before finishing it.") from None
        for piece in reply.add(result):
            yield piece
