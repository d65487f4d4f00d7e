"""`POST /v1/completions` (legacy text completion; Paddler has none): the prompt is continued
as is, with no chat template, through the native raw-prompt request.

`prompt` is a string (or an array holding one string); `max_tokens` defaults to 16 as in
OpenAI's API; `temperature`, `top_p`, `seed`, `stop` and `response_format` work as in chat
completions. Streams are `text_completion` chunks, the usage chunk on request, then
`data: [DONE]`. `echo`, `suffix`, `logprobs`, `best_of` > 1 and `n` > 1 are refused.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import attrs
from quart import Response

from paddler_trio.proxy.openai_chat_completions import SYSTEM_FINGERPRINT
from paddler_trio.proxy.openai_chat_request import read_stream_options
from paddler_trio.proxy.openai_dispatch import AgentReplies, OpenAIDispatcher
from paddler_trio.proxy.openai_errors import OpenAIError, unsupported
from paddler_trio.proxy.openai_reply import ContentPiece, ReplyAssembler, ReplyPiece, collect, first_pieces_of, rest_of
from paddler_trio.proxy.openai_request_fields import RequestObject, invalid_type
from paddler_trio.proxy.openai_response_format import chat_response_format_grammar
from paddler_trio.proxy.openai_sampling import SamplingOverrides
from paddler_trio.proxy.openai_sse import SSE_DONE, sse_data, sse_response
from paddler_trio.proxy.openai_usage import completion_usage
from paddler_trio.proxy.request_id import new_request_id
from paddler_trio.proxy.request_validation import generation_request_problems, invalid_parameters_description
from paddler_trio.protocol import ContinueFromRawPromptParams

DEFAULT_MAX_TOKENS = 16


@attrs.frozen
class CompletionRequest:
    model: str
    stream: bool
    include_usage: bool
    params: ContinueFromRawPromptParams


def read_completion_request(body: RequestObject) -> CompletionRequest:
    model = body.string("model", required=True)
    assert model is not None
    stream, include_usage = read_stream_options(body)
    body.refuse_truthy("echo", "suffix", "logprobs")
    for name in ("n", "best_of"):
        count = body.integer(name, minimum=1)
        if count is not None and count > 1:
            raise unsupported(name, f"Only {name}=1 is supported: each request produces one choice.")
    max_tokens = body.integer("max_tokens", minimum=1)
    params = ContinueFromRawPromptParams(
        grammar=chat_response_format_grammar(body),
        max_tokens=DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens,
        raw_prompt=_prompt(body),
        **SamplingOverrides.read(body).fields(),
    )
    problems = generation_request_problems(params)
    if problems:
        raise OpenAIError(400, invalid_parameters_description(problems))
    return CompletionRequest(model=model, stream=stream, include_usage=include_usage, params=params)


def _prompt(body: RequestObject) -> str:
    prompt = body.data.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
        if not isinstance(prompt, str):
            raise invalid_type("prompt[0]", "a string (token arrays are not supported)", prompt)
        return prompt
    if isinstance(prompt, list):
        raise unsupported("prompt", "Only one prompt per request is supported.")
    value = body.string("prompt", required=True)
    assert value is not None
    return value


class _Completion:
    def __init__(self, request: CompletionRequest) -> None:
        self.request = request
        self.id = "cmpl-" + new_request_id()
        self.created = int(time.time())
        self.reply = ReplyAssembler(
            max_tokens=request.params.max_tokens, grammar_param="response_format", messages_param="prompt"
        )

    def _object(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.request.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        }

    def body(self) -> dict[str, Any]:
        assert self.reply.usage is not None
        body = self._object([self._choice(self.reply.content, self.reply.finish_reason)])
        body["usage"] = completion_usage(self.reply.usage)
        return body

    def chunk(self, text: str, finish_reason: str | None = None) -> bytes:
        chunk = self._object([self._choice(text, finish_reason)])
        if self.request.include_usage:
            chunk["usage"] = None
        return sse_data(chunk)

    def usage_chunk(self) -> bytes:
        assert self.reply.usage is not None
        chunk = self._object([])
        chunk["usage"] = completion_usage(self.reply.usage)
        return sse_data(chunk)

    @staticmethod
    def _choice(text: str, finish_reason: str | None) -> dict[str, Any]:
        return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}


async def completions(dispatcher: OpenAIDispatcher, body: RequestObject) -> Response | dict[str, Any]:
    completion = _Completion(read_completion_request(body))
    replies = dispatcher.dispatch(completion.request.params, route_name="Completions")
    if not completion.request.stream:
        await collect(replies, completion.reply)
        return completion.body()
    first_pieces = await first_pieces_of(replies, completion.reply)
    return sse_response(_stream(completion, replies, first_pieces))


def _text_of(pieces: list[ReplyPiece]) -> str:
    return "".join(piece.text for piece in pieces if isinstance(piece, ContentPiece))


async def _stream(
    completion: _Completion, replies: AgentReplies, first_pieces: list[ReplyPiece]
) -> AsyncIterator[bytes]:
    try:
        if _text_of(first_pieces):
            yield completion.chunk(_text_of(first_pieces))
        try:
            async for piece in rest_of(replies, completion.reply):
                if isinstance(piece, ContentPiece):
                    yield completion.chunk(piece.text)
        except OpenAIError as error:
            yield sse_data(error.body())
            yield SSE_DONE
            return
        yield completion.chunk("", completion.reply.finish_reason)
        if completion.request.include_usage:
            yield completion.usage_chunk()
        yield SSE_DONE
    finally:
        replies.close()
