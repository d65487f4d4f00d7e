"""`POST /v1/chat/completions`: one chat turn through the native dispatch path, answered as a
`chat.completion` body or a stream of `chat.completion.chunk` events (spec 3.1, with
"Where we go beyond Paddler", item 6).

Stream: a first chunk with the assistant role, then one chunk per piece (`content`, or the
parsed `tool_calls` with JSON-text arguments), a last chunk
with the `finish_reason` (`stop`, `length` when the token limit ended the reply,
`tool_calls`), the usage chunk when `stream_options.include_usage` asks for it, and
`data: [DONE]`. An error after the stream started is one `{"error": ...}` event, then
`[DONE]`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from quart import Response

from paddler_trio import __version__
from paddler_trio.proxy.openai_chat_request import ChatRequest, read_chat_request
from paddler_trio.proxy.openai_dispatch import AgentReplies, OpenAIDispatcher
from paddler_trio.proxy.openai_errors import OpenAIError
from paddler_trio.proxy.openai_reply import (
    ContentPiece,
    ReasoningPiece,
    ReplyAssembler,
    ReplyPiece,
    ToolCall,
    collect,
    first_pieces_of,
    rest_of,
)
from paddler_trio.proxy.openai_request_fields import RequestObject
from paddler_trio.proxy.openai_sse import SSE_DONE, sse_data, sse_response
from paddler_trio.proxy.openai_usage import completion_usage
from paddler_trio.proxy.request_id import new_request_id

SYSTEM_FINGERPRINT = f"paddler-trio-{__version__}"


def _tool_call_json(call: ToolCall) -> dict[str, Any]:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


class ChatCompletionAnswer:
    """One request's identity and reply; builds its body or its chunks."""

    def __init__(self, request: ChatRequest) -> None:
        self.request = request
        self.id = "chatcmpl-" + new_request_id()
        self.created = int(time.time())
        self.reply = ReplyAssembler(
            max_tokens=request.params.max_tokens, grammar_param="response_format", messages_param="messages"
        )

    def body(self) -> dict[str, Any]:
        reply = self.reply
        assert reply.usage is not None
        message: dict[str, Any] = {
            "role": "assistant",
            "content": reply.content if reply.content or not reply.tool_calls else None,
            "refusal": None,
            "annotations": [],
        }
        if reply.tool_calls:
            message["tool_calls"] = [_tool_call_json(call) for call in reply.tool_calls]
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.request.model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": reply.finish_reason}],
            "usage": completion_usage(reply.usage),
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return self._chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}])

    def usage_chunk(self) -> bytes:
        assert self.reply.usage is not None
        return self._chunk([], usage=completion_usage(self.reply.usage))

    def _chunk(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.request.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        }
        if self.request.include_usage:
            chunk["usage"] = usage  # null on every chunk but the last, as OpenAI sends it
        return sse_data(chunk)

    def piece_chunk(self, piece: ReplyPiece) -> bytes | None:
        """The chunk of one piece; none for thinking, which Paddler's chat completions do not send
        (no `reasoning_content`: its strict OpenAI schema check refuses it). Its tokens still count
        in `usage.completion_tokens_details.reasoning_tokens`."""
        if isinstance(piece, ContentPiece):
            return self.chunk({"content": piece.text})
        if isinstance(piece, ReasoningPiece):
            return None
        return self.chunk(
            {
                "tool_calls": [
                    {"index": piece.first_index + offset, **_tool_call_json(call)}
                    for offset, call in enumerate(piece.calls)
                ]
            }
        )


async def chat_completions(dispatcher: OpenAIDispatcher, body: RequestObject) -> Response | dict[str, Any]:
    completion = ChatCompletionAnswer(read_chat_request(body))
    replies = dispatcher.dispatch(completion.request.params, route_name="Chat completions")
    if not completion.request.stream:
        await collect(replies, completion.reply)
        return completion.body()
    first_pieces = await first_pieces_of(replies, completion.reply)
    return sse_response(_stream(completion, replies, first_pieces))


async def _stream(
    completion: ChatCompletionAnswer, replies: AgentReplies, first_pieces: list[ReplyPiece]
) -> AsyncIterator[bytes]:
    try:
        yield completion.chunk({"role": "assistant", "content": "", "refusal": None})
        for piece in first_pieces:
            if chunk := completion.piece_chunk(piece):
                yield chunk
        try:
            async for piece in rest_of(replies, completion.reply):
                if chunk := completion.piece_chunk(piece):
                    yield chunk
        except OpenAIError as error:
            yield sse_data(error.body())
            yield SSE_DONE
            return
        yield completion.chunk({}, completion.reply.finish_reason)
        if completion.request.include_usage:
            yield completion.usage_chunk()
        yield SSE_DONE
    finally:
        replies.close()
