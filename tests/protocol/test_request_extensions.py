"""Our request extensions: the header an agent offers them with, and a request reduced to
Paddler's own shape for an agent that does not (or the fields that cannot be dropped)."""

from __future__ import annotations

import json

import attrs
import pytest

from paddler_trio.protocol import (
    AgentRequest,
    CalledFunction,
    ContinueFromConversationHistoryParams,
    ContinueFromRawPromptParams,
    ConversationMessage,
    EmbeddingInputDocument,
    GenerateEmbeddingBatchParams,
    GetModelMetadataRequest,
    L2Normalization,
    MessageToolCall,
    RequestEnvelope,
    to_json,
)
from paddler_trio.protocol.request_extensions import (
    MESSAGE_EXTENSION_FIELDS,
    SAMPLING_OVERRIDE_FIELDS,
    InexpressibleFields,
    accepts_request_extensions,
    paddler_shaped,
)

# Paddler 4.x's own fields (spec 2.2).
PADDLER_RAW_PROMPT_FIELDS = {"grammar", "max_tokens", "raw_prompt"}
PADDLER_CONVERSATION_FIELDS = {
    "add_generation_prompt",
    "conversation_history",
    "enable_thinking",
    "grammar",
    "max_tokens",
    "parse_tool_calls",
    "tools",
}
PADDLER_MESSAGE_FIELDS = {"role", "content"}

RAW = ContinueFromRawPromptParams(raw_prompt="Hi", max_tokens=4)
CONVERSATION = ContinueFromConversationHistoryParams(
    add_generation_prompt=True,
    conversation_history=(ConversationMessage(role="user", content="Hi"),),
    enable_thinking=False,
    max_tokens=4,
)
CALL = MessageToolCall(id="c1", function=CalledFunction(name="weather", arguments="{}"))


def paddler_keys(request: ContinueFromRawPromptParams | ContinueFromConversationHistoryParams) -> set[str]:
    (params,) = json.loads(to_json(RequestEnvelope(id="r", request=request)))["Request"]["request"].values()
    return set(params)


def test_the_extension_fields_are_exactly_ours_beyond_paddlers() -> None:
    assert {field.name for field in attrs.fields(ContinueFromRawPromptParams)} - PADDLER_RAW_PROMPT_FIELDS == set(
        SAMPLING_OVERRIDE_FIELDS
    )
    assert {field.name for field in attrs.fields(ContinueFromConversationHistoryParams)} - PADDLER_CONVERSATION_FIELDS == set(
        SAMPLING_OVERRIDE_FIELDS
    )
    assert {field.name for field in attrs.fields(ConversationMessage)} - PADDLER_MESSAGE_FIELDS == set(MESSAGE_EXTENSION_FIELDS)


@pytest.mark.parametrize(
    ("value", "accepted"),
    [("1", True), (" 1 ", True), (None, False), ("", False), ("2", False), ("yes", False)],
)
def test_the_header_offers_version_1_only(value: str | None, accepted: bool) -> None:
    assert accepts_request_extensions(value) is accepted


@pytest.mark.parametrize("request_", [RAW, CONVERSATION])
def test_a_request_without_extensions_goes_as_it_is(
    request_: ContinueFromRawPromptParams | ContinueFromConversationHistoryParams,
) -> None:
    assert paddler_shaped(request_) is request_


@pytest.mark.parametrize("request_", [RAW, CONVERSATION])
def test_an_empty_stop_list_is_dropped(request_: ContinueFromRawPromptParams | ContinueFromConversationHistoryParams) -> None:
    shaped = paddler_shaped(attrs.evolve(request_, stop=()))
    assert shaped == request_
    assert isinstance(shaped, (ContinueFromRawPromptParams, ContinueFromConversationHistoryParams))
    assert "stop" not in paddler_keys(shaped)


@pytest.mark.parametrize(
    ("changes", "fields"),
    [
        ({"temperature": 0.0}, ("temperature",)),
        ({"top_p": 0.5, "top_k": 0}, ("top_p", "top_k")),
        ({"min_p": 0.1}, ("min_p",)),
        ({"seed": 0}, ("seed",)),
        ({"stop": ("END",)}, ("stop",)),
        ({"temperature": 1.0, "seed": 7, "stop": ("a", "b")}, ("temperature", "seed", "stop")),
    ],
)
def test_a_sampling_override_cannot_be_dropped(changes: dict[str, object], fields: tuple[str, ...]) -> None:
    for request in (RAW, CONVERSATION):
        assert paddler_shaped(attrs.evolve(request, **changes)) == InexpressibleFields(fields)


def test_tool_call_history_cannot_be_dropped() -> None:
    history = (
        ConversationMessage(role="user", content="Weather?", name="ada"),
        ConversationMessage(role="assistant", content="", tool_calls=(CALL,)),
        ConversationMessage(role="tool", content="sunny", tool_call_id="c1"),
        ConversationMessage(role="assistant", content="", tool_calls=()),
    )
    request = attrs.evolve(CONVERSATION, conversation_history=history, temperature=0.2)
    assert paddler_shaped(request) == InexpressibleFields(
        (
            "temperature",
            "conversation_history[0].name",
            "conversation_history[1].tool_calls",
            "conversation_history[2].tool_call_id",
            "conversation_history[3].tool_calls",
        )
    )


@pytest.mark.parametrize(
    "request_",
    [
        GetModelMetadataRequest(),
        GenerateEmbeddingBatchParams(
            input_batch=(EmbeddingInputDocument(id="d", content="text"),), normalization_method=L2Normalization()
        ),
    ],
)
def test_other_requests_have_no_extensions(request_: AgentRequest) -> None:
    assert paddler_shaped(request_) is request_
