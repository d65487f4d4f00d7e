"""How the OpenAI routes assemble a reply from token results (thinking, tool calls, limits), and
the Responses output items and events built from it, checked against the `openai` types.

The test models have no thinking sections, so reasoning is driven here with the token
results a thinking model's agent sends."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types.chat import ChatCompletion
from openai.types.responses import Response, ResponseStreamEvent

from paddler_trio.proxy.openai_chat_completions import ChatCompletionAnswer
from paddler_trio.proxy.openai_chat_request import read_chat_request
from paddler_trio.proxy.openai_errors import OpenAIError
from paddler_trio.proxy.openai_reply import ContentPiece, ReasoningPiece, ReplyAssembler, ToolCallsPiece
from paddler_trio.proxy.openai_request_fields import RequestObject
from paddler_trio.proxy.openai_responses import ResponseBuilder
from paddler_trio.proxy.openai_responses_request import read_responses_request
from tests.proxy.openai_strictly import strictly
from paddler_trio.protocol import (
    ContentToken,
    GenerationDone,
    GrammarSyntaxError,
    InvalidJsonArguments,
    ParsedToolCall,
    ReasoningToken,
    SamplerError,
    TokenUsage,
    ToolCallParsed,
    ToolCallToken,
    UnrecognizedToolCallFormat,
    ValidJsonArguments,
)


def assembler(max_tokens: int = 10) -> ReplyAssembler:
    return ReplyAssembler(max_tokens=max_tokens, grammar_param="response_format", messages_param="messages")


def test_reasoning_then_content_and_finish_reasons() -> None:
    reply = assembler(max_tokens=3)
    pieces = [
        *reply.add(ReasoningToken("Hmm")),
        *reply.add(ContentToken("Hi")),
        *reply.add(ContentToken("")),
        *reply.add(GenerationDone(TokenUsage(prompt_tokens=5, reasoning_tokens=1, content_tokens=2))),
    ]
    assert pieces == [ReasoningPiece("Hmm"), ContentPiece("Hi")]
    assert (reply.reasoning, reply.content, reply.finish_reason) == ("Hmm", "Hi", "length")
    short = assembler(max_tokens=3)
    short.add(GenerationDone(TokenUsage(content_tokens=2)))
    assert short.finish_reason == "stop"


def test_parsed_tool_calls_have_json_text_arguments() -> None:
    reply = assembler()
    assert reply.add(ToolCallToken('{"name": "f"')) == []
    calls = (
        ParsedToolCall(id="call_1", name="f", arguments=ValidJsonArguments({"city": "Paris"})),
        ParsedToolCall(id="call_2", name="g", arguments=InvalidJsonArguments("{oops")),
    )
    (piece,) = reply.add(ToolCallParsed(calls))
    assert isinstance(piece, ToolCallsPiece) and piece.first_index == 0
    assert [(call.name, call.arguments) for call in piece.calls] == [("f", '{"city": "Paris"}'), ("g", "{oops")]
    reply.add(GenerationDone(TokenUsage(tool_call_tokens=9)))
    assert reply.finish_reason == "tool_calls"


def test_a_tool_call_that_cannot_be_parsed_comes_back_as_content() -> None:
    reply = assembler()
    reply.add(ToolCallToken("<tool_call>not json"))
    assert reply.add(UnrecognizedToolCallFormat(text="<tool_call>not json", ffi_error_message="bad")) == [
        ContentPiece("<tool_call>not json")
    ]
    reply.add(GenerationDone(TokenUsage(tool_call_tokens=4)))
    assert (reply.content, reply.finish_reason) == ("<tool_call>not json", "stop")


@pytest.mark.parametrize(
    ("failure", "status", "param"),
    [
        (GrammarSyntaxError("bad schema"), 400, "response_format"),
        (
            SamplerError("the prompt has 5000 tokens but a slot holds at most 1024 (context_size / slots)"),
            400,
            "messages",
        ),
        (SamplerError("Request evicted due to KV cache pressure"), 503, None),
    ],
)
def test_generation_errors_map_to_openai_errors(failure: object, status: int, param: str | None) -> None:
    with pytest.raises(OpenAIError) as raised:
        assembler().add(failure)
    assert (raised.value.status, raised.value.param) == (status, param)


def test_responses_items_and_events_follow_the_token_kinds() -> None:
    request = read_responses_request(RequestObject({"model": "m", "input": "Hi", "max_output_tokens": 50}, ""))
    builder = ResponseBuilder(request)
    events: list[dict[str, Any]] = builder.start()
    results = [
        ReasoningToken("Let me"),
        ReasoningToken(" think."),
        ContentToken("Hello"),
        ContentToken("!"),
        ToolCallParsed((ParsedToolCall(id="call_1", name="f", arguments=ValidJsonArguments({})),)),
        GenerationDone(TokenUsage(prompt_tokens=3, reasoning_tokens=2, content_tokens=2, tool_call_tokens=5)),
    ]
    for result in results:
        for piece in builder.reply.add(result):
            events.extend(builder.add(piece))
    events.extend(builder.finish())
    for event in events:
        strictly(ResponseStreamEvent, json.loads(json.dumps(event)))
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    final = strictly(Response, events[-1]["response"])
    assert events[-1]["type"] == "response.completed"
    # A reasoning item has no content part events (as in Paddler), a message item has.
    assert [event["type"] for event in events if event["type"].startswith("response.content_part")] == [
        "response.content_part.added",
        "response.content_part.done",
    ]
    assert [item.type for item in final.output] == ["reasoning", "message", "function_call"]
    assert final.output[0].content[0].text == "Let me think."
    assert final.output_text == "Hello!"
    assert final.usage.output_tokens == 9 and final.usage.output_tokens_details.reasoning_tokens == 2
    assert [event["type"] for event in events if event["type"].endswith(".delta")] == [
        "response.reasoning_text.delta",
        "response.reasoning_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.function_call_arguments.delta",
    ]


def test_chat_completion_leaves_thinking_out_and_counts_its_tokens() -> None:
    """As Paddler: no `reasoning_content` (its schema check refuses the field)."""
    request = read_chat_request(RequestObject({"model": "m", "messages": [{"role": "user", "content": "Hi"}]}, ""))
    completion = ChatCompletionAnswer(request)
    for result in (
        ReasoningToken("Pondering."),
        ContentToken("Hi!"),
        GenerationDone(TokenUsage(reasoning_tokens=1, content_tokens=1)),
    ):
        completion.reply.add(result)
    body = completion.body()
    message = strictly(ChatCompletion, body).choices[0].message
    assert message.content == "Hi!"
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == 1
    assert completion.piece_chunk(ReasoningPiece("Pondering.")) is None
