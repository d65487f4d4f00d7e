"""`POST /v1/responses` request body -> the native conversation request (spec 3.2).

`input` is a string (one user message) or a list of items: messages (`role` user, assistant,
system or developer -> system; content a string or `input_text` / `output_text` /
`input_image` parts), `function_call` items (merged into the assistant message before them,
as its `tool_calls`), `function_call_output` items (`tool` messages answering a call) and
`reasoning` items (dropped: templates do not replay old thinking). `instructions` becomes a
leading system message. `max_output_tokens` (default 2000) is the limit, `text.format` a
grammar, `reasoning.effort` "none" turns thinking off (as does a `text.format` grammar).
This server keeps no responses, so `previous_response_id` is refused.
"""

from __future__ import annotations

from typing import Any

import attrs

from paddler_trio.proxy.openai_errors import OpenAIError, invalid_value, missing_parameter, unsupported
from paddler_trio.proxy.openai_request_fields import RequestObject, invalid_type, not_one_of
from paddler_trio.proxy.openai_response_format import text_format_grammar
from paddler_trio.proxy.openai_sampling import SamplingOverrides
from paddler_trio.proxy.openai_tools import responses_tools
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

DEFAULT_MAX_OUTPUT_TOKENS = 2000

_ROLES = ("user", "assistant", "system", "developer")
_ITEM_TYPES = ("message", "function_call", "function_call_output", "reasoning")
_TEXT_PART_TYPES = ("input_text", "output_text", "text")
_PART_TYPES = (*_TEXT_PART_TYPES, "input_image")
_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")


@attrs.frozen
class ResponsesRequest:
    model: str
    stream: bool
    params: ContinueFromConversationHistoryParams
    # Echoed in the response object.
    instructions: str | None
    max_output_tokens: int | None
    tools: list[Any]
    tool_choice: Any
    text_format: dict[str, Any]
    reasoning_effort: str | None
    temperature: float
    top_p: float
    metadata: dict[str, Any]


def read_responses_request(body: RequestObject) -> ResponsesRequest:
    model = body.string("model", required=True)
    assert model is not None
    if body.present("previous_response_id"):
        raise unsupported(
            "previous_response_id", "This server keeps no responses: send the whole conversation in 'input'."
        )
    instructions = body.string("instructions")
    history = _history(body)
    if instructions:
        history.insert(0, ConversationMessage(role="system", content=instructions))
    if not history:
        raise missing_parameter("input")
    grammar = text_format_grammar(body)
    effort = _reasoning_effort(body)
    if grammar is not None and effort not in (None, "none"):
        raise invalid_value(
            "text.format",
            "A text.format grammar cannot constrain a reply that starts with thinking: "
            "leave reasoning.effort unset (or 'none') when asking for structured output.",
        )
    max_output_tokens = body.integer("max_output_tokens", minimum=1)
    tools = responses_tools(body)
    sampling = SamplingOverrides.read(body, with_seed_and_stop=False)
    params = ContinueFromConversationHistoryParams(
        add_generation_prompt=True,
        conversation_history=tuple(history),
        enable_thinking=grammar is None and effort != "none",
        grammar=grammar,
        max_tokens=DEFAULT_MAX_OUTPUT_TOKENS if max_output_tokens is None else max_output_tokens,
        parse_tool_calls=bool(tools),
        tools=tools,
        **sampling.fields(),
    )
    problems = generation_request_problems(params)
    if problems:
        raise OpenAIError(400, invalid_parameters_description(problems))
    text = body.object("text")
    text_format = text.object("format") if text is not None else None
    metadata = body.object("metadata")
    return ResponsesRequest(
        model=model,
        stream=body.boolean("stream", default=False),
        params=params,
        instructions=instructions,
        max_output_tokens=max_output_tokens,
        tools=body.data.get("tools") or [],
        tool_choice=body.data.get("tool_choice") or "auto",
        text_format=text_format.data if text_format is not None else {"type": "text"},
        reasoning_effort=effort,
        temperature=1.0 if sampling.temperature is None else sampling.temperature,
        top_p=1.0 if sampling.top_p is None else sampling.top_p,
        metadata=metadata.data if metadata is not None else {},
    )


def _reasoning_effort(body: RequestObject) -> str | None:
    reasoning = body.object("reasoning")
    return reasoning.choice("effort", _EFFORTS) if reasoning is not None else None


def _history(body: RequestObject) -> list[ConversationMessage]:
    value = body.data.get("input")
    if value is None:
        return []
    if isinstance(value, str):
        return [ConversationMessage(role="user", content=value)]
    items = body.objects("input")
    assert items is not None
    history: list[ConversationMessage] = []
    for item in items:
        kind = item.data.get("type", "message")
        if kind == "message":
            history.append(_message(item))
        elif kind == "function_call":
            _add_function_call(history, item)
        elif kind == "function_call_output":
            history.append(_function_call_output(item))
        elif kind != "reasoning":
            if not isinstance(kind, str):
                raise invalid_type(item.param("type"), "a string", kind)
            raise not_one_of(item.param("type"), kind, _ITEM_TYPES)
    return history


def _message(item: RequestObject) -> ConversationMessage:
    role = item.choice("role", _ROLES, required=True)
    assert role is not None
    return ConversationMessage(role="system" if role == "developer" else role, content=_content(item))


def _content(item: RequestObject) -> str | tuple[ContentPart, ...]:
    value = item.data.get("content")
    if isinstance(value, str):
        return value
    parts = item.objects("content", required=True)
    assert parts is not None
    return tuple(_part(part) for part in parts)


def _part(part: RequestObject) -> ContentPart:
    kind = part.choice("type", _PART_TYPES, required=True)
    if kind in _TEXT_PART_TYPES:
        text = part.string("text", required=True)
        assert text is not None
        return TextPart(text)
    url = part.string("image_url")
    if url is None:
        raise unsupported(
            part.param("image_url"), "Images must be given as 'image_url' (a data: URI); file ids are not supported."
        )
    return ImageUrlPart(ImageUrl(url))


def _add_function_call(history: list[ConversationMessage], item: RequestObject) -> None:
    call_id = item.string("call_id", required=True)
    name = item.string("name", required=True)
    arguments = item.string("arguments", required=True)
    assert call_id is not None and name is not None and arguments is not None
    call = MessageToolCall(id=call_id, function=CalledFunction(name=name, arguments=arguments))
    if history and history[-1].role == "assistant":
        previous = history[-1]
        history[-1] = attrs.evolve(previous, tool_calls=(*(previous.tool_calls or ()), call))
    else:
        history.append(ConversationMessage(role="assistant", content="", tool_calls=(call,)))


def _function_call_output(item: RequestObject) -> ConversationMessage:
    call_id = item.string("call_id", required=True)
    value = item.data.get("output")
    if isinstance(value, str):
        output = value
    else:
        parts = item.objects("output", required=True)
        assert parts is not None
        output = "".join(part.string("text") or "" for part in parts)
    return ConversationMessage(role="tool", content=output, tool_call_id=call_id)
