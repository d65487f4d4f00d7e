"""`POST /v1/chat/completions` request body -> the native conversation request (spec 3.1 and
"Where we go beyond Paddler", item 6).

Beyond Paddler's mapping: assistant `tool_calls`, `tool_call_id` and `name` reach the chat
template; `temperature`, `top_p`, `seed`, `stop` are honoured; `max_completion_tokens` (or
the legacy `max_tokens`, default 2000) is the limit; `response_format` becomes a grammar
(and turns thinking off, which a grammar needs); thinking is on unless `reasoning_effort`
is "none" or `chat_template_kwargs.enable_thinking` is false. Unknown fields are ignored, as
OpenAI's own API and Paddler do; fields whose meaning this server cannot honour (`n` > 1,
`logprobs`, `audio`) are a 400 rather than a silently different answer.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from paddler_trio.proxy.openai_errors import OpenAIError, invalid_value, missing_parameter, unsupported
from paddler_trio.proxy.openai_request_fields import RequestObject, invalid_type, not_one_of
from paddler_trio.proxy.openai_response_format import chat_response_format_grammar
from paddler_trio.proxy.openai_sampling import SamplingOverrides
from paddler_trio.proxy.openai_tools import chat_tools
from paddler_trio.proxy.request_validation import generation_request_problems, invalid_parameters_description
from paddler_trio.protocol import (
    CalledFunction,
    ContentPart,
    ContinueFromConversationHistoryParams,
    ConversationMessage,
    ImageUrl,
    ImageUrlPart,
    MessageToolCall,
    TextPart,
)

DEFAULT_MAX_TOKENS = 2000

ROLES = ("system", "developer", "user", "assistant", "tool")
_CONTENT_PART_TYPES = ("text", "image_url")
_REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")


@attrs.frozen
class ChatRequest:
    model: str
    stream: bool
    include_usage: bool
    params: ContinueFromConversationHistoryParams


def read_chat_request(body: RequestObject) -> ChatRequest:
    model = body.string("model", required=True)
    assert model is not None
    messages = body.objects("messages", required=True)
    assert messages is not None
    if not messages:
        raise invalid_value(
            "messages", "Invalid 'messages': empty array. Expected an array with minimum length 1.", code="empty_array"
        )
    history = tuple(read_message(message) for message in messages)
    stream, include_usage = read_stream_options(body)
    _refuse_several_choices(body)
    body.refuse_truthy("logprobs", "top_logprobs", "audio")
    grammar = chat_response_format_grammar(body)
    params = ContinueFromConversationHistoryParams(
        add_generation_prompt=True,
        conversation_history=history,
        enable_thinking=_thinking(body, grammar_requested=grammar is not None),
        grammar=grammar,
        max_tokens=_max_tokens(body),
        **_tools_fields(body),
        **SamplingOverrides.read(body).fields(),
    )
    problems = generation_request_problems(params)
    if problems:
        raise OpenAIError(400, invalid_parameters_description(problems))
    return ChatRequest(model=model, stream=stream, include_usage=include_usage, params=params)


def read_stream_options(body: RequestObject) -> tuple[bool, bool]:
    """`stream` and `stream_options.include_usage` (which only a stream may carry, as OpenAI checks)."""
    stream = body.boolean("stream", default=False)
    options = body.object("stream_options")
    if options is None:
        return stream, False
    if not stream:
        raise invalid_value(
            "stream_options", "The 'stream_options' parameter is only allowed when 'stream' is enabled."
        )
    return stream, options.boolean("include_usage", default=False)


def _refuse_several_choices(body: RequestObject) -> None:
    n = body.integer("n", minimum=1)
    if n is not None and n > 1:
        raise unsupported("n", "Only n=1 is supported: each request produces one choice.")


def _max_tokens(body: RequestObject) -> int:
    limit = body.integer("max_completion_tokens", minimum=1)
    if limit is None:
        limit = body.integer("max_tokens", minimum=1)
    return DEFAULT_MAX_TOKENS if limit is None else limit


def _thinking(body: RequestObject, *, grammar_requested: bool) -> bool:
    asked: bool | None = None
    effort = body.choice("reasoning_effort", _REASONING_EFFORTS)
    if effort is not None:
        asked = effort != "none"
    template_options = body.object("chat_template_kwargs")
    if template_options is not None and template_options.present("enable_thinking"):
        asked = template_options.boolean("enable_thinking", default=True)
    if grammar_requested:
        if asked:
            raise invalid_value(
                "response_format",
                "A response_format grammar cannot constrain a reply that starts with thinking: "
                "leave reasoning_effort unset (or 'none') when asking for structured output.",
            )
        return False
    return True if asked is None else asked


def _tools_fields(body: RequestObject) -> dict[str, Any]:
    tools = chat_tools(body)
    return {"tools": tools, "parse_tool_calls": bool(tools)}


def read_message(message: RequestObject) -> ConversationMessage:
    role = message.choice("role", ROLES, required=True)
    assert role is not None
    tool_calls = _tool_calls(message) if role == "assistant" else None
    content_required = role != "assistant"
    return ConversationMessage(
        role="system" if role == "developer" else role,
        content=_content(message, required=content_required),
        tool_calls=tool_calls,
        tool_call_id=message.string("tool_call_id", required=role == "tool"),
        name=message.string("name"),
    )


def _content(message: RequestObject, *, required: bool) -> str | tuple[ContentPart, ...]:
    value = message.data.get("content")
    param = message.param("content")
    if value is None:
        if not required:
            return ""
        if "content" in message.data:
            raise invalid_type(param, "a string or an array of content parts", value)
        raise missing_parameter(param)
    if isinstance(value, str):
        return value
    parts = message.objects("content")
    assert parts is not None
    return tuple(_content_part(part) for part in parts)


def _content_part(part: RequestObject) -> ContentPart:
    kind = part.data.get("type")
    if kind == "text":
        text = part.string("text", required=True)
        assert text is not None
        return TextPart(text)
    if kind == "image_url":
        image = part.object("image_url", required=True)
        assert image is not None
        url = image.string("url", required=True)
        assert url is not None
        return ImageUrlPart(ImageUrl(url))
    if kind is None:
        raise missing_parameter(part.param("type"))
    raise not_one_of(part.param("type"), kind, _CONTENT_PART_TYPES)


def _tool_calls(message: RequestObject) -> tuple[MessageToolCall, ...] | None:
    calls = message.objects("tool_calls")
    if not calls:
        return None
    return tuple(_tool_call(call) for call in calls)


def _tool_call(call: RequestObject) -> MessageToolCall:
    call_id = call.string("id", required=True)
    call.choice("type", ("function",))
    function = call.object("function", required=True)
    assert call_id is not None and function is not None
    name = function.string("name", required=True)
    arguments: Any = function.data.get("arguments", "{}")
    if not isinstance(arguments, str):
        # Some clients send the arguments object itself; OpenAI's shape is its JSON text.
        arguments = json.dumps(arguments, ensure_ascii=False)
    assert name is not None
    return MessageToolCall(id=call_id, function=CalledFunction(name=name, arguments=arguments))
