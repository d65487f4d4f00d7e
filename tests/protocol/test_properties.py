"""Property tests: every generated value survives a round trip; no input makes decoding raise anything
but WireFormatError."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paddler_trio.protocol import (
    AgentBoundMessage,
    AgentControllerPoolSnapshot,
    BalancerBoundMessage,
    BalancerDesiredState,
    BufferedRequestsSnapshot,
    ContentToken,
    ContinueFromConversationHistoryParams,
    ContinueFromRawPromptParams,
    EmbeddingResult,
    GenerateEmbeddingBatchParams,
    GeneratedTokenResult,
    InferenceClientBoundMessage,
    InferenceParameters,
    InferenceServerBoundMessage,
    ReasoningToken,
    ResponseEnvelope,
    ToolCallToken,
    UndeterminableToken,
    WireFormatError,
    from_json,
    structure,
    to_json,
    unstructure,
)
from paddler_trio.protocol.converter import _encoder
from tests.protocol.strategies import for_type, json_values

MAIN_TYPES: list[Any] = [
    GeneratedTokenResult,
    EmbeddingResult,
    ContinueFromConversationHistoryParams,
    ContinueFromRawPromptParams,
    GenerateEmbeddingBatchParams,
    BalancerDesiredState,
    AgentControllerPoolSnapshot,
    InferenceServerBoundMessage,
    InferenceClientBoundMessage,
    AgentBoundMessage,
    BalancerBoundMessage,
]

MAIN_TYPE_IDS = [
    "GeneratedTokenResult",
    "EmbeddingResult",
    "ContinueFromConversationHistoryParams",
    "ContinueFromRawPromptParams",
    "GenerateEmbeddingBatchParams",
    "BalancerDesiredState",
    "AgentControllerPoolSnapshot",
    "InferenceServerBoundMessage",
    "InferenceClientBoundMessage",
    "AgentBoundMessage",
    "BalancerBoundMessage",
]

TOP_LEVEL_TYPES: list[Any] = [*MAIN_TYPES, InferenceParameters, BufferedRequestsSnapshot]

TOP_LEVEL_TYPE_IDS = [*MAIN_TYPE_IDS, "InferenceParameters", "BufferedRequestsSnapshot"]

FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Keys that real messages use, so arbitrary JSON often reaches deep into the decoders.
WIRE_KEYS = st.sampled_from(
    [
        "Request", "Response", "Error", "Notification", "id", "request", "request_id", "generated_by", "response",
        "GeneratedToken", "Embedding", "ContentToken", "Done", "usage", "StopRespondingTo", "RegisterAgent",
        "ContinueFromRawPrompt", "ContinueFromConversationHistory", "raw_prompt", "max_tokens", "grammar", "type",
        "conversation_history", "role", "content", "tools", "function", "name", "description", "parameters",
        "input_batch", "normalization_method", "RmsNorm", "epsilon", "model", "HuggingFace", "issues",
        "slot_aggregated_status_snapshot", "code", "description", "text", "image_url", "url",
    ]
)  # fmt: skip


@pytest.mark.parametrize("cls", MAIN_TYPES, ids=MAIN_TYPE_IDS)
@FAST
@given(data=st.data())
def test_round_trip(cls: Any, data: st.DataObject) -> None:
    value = data.draw(for_type(cls))
    assert structure(unstructure(value), cls) == value
    assert from_json(to_json(value), cls) == value


@FAST
@given(
    token=st.sampled_from([ContentToken, ReasoningToken, ToolCallToken, UndeterminableToken]),
    text=st.text(),
    request_id=st.text(),
    generated_by=st.none() | st.text(),
)
def test_token_fast_path_writes_the_generic_bytes(
    token: Any, text: str, request_id: str, generated_by: str | None
) -> None:
    envelope = ResponseEnvelope(generated_by, request_id, token(text))
    assert to_json(envelope) == _encoder.encode(unstructure(envelope))
    assert from_json(to_json(envelope), InferenceClientBoundMessage) == envelope


def decode_or_reject(text: str, cls: Any) -> None:
    try:
        from_json(text, cls)
    except WireFormatError as error:
        assert str(error)


@pytest.mark.parametrize("cls", TOP_LEVEL_TYPES, ids=TOP_LEVEL_TYPE_IDS)
@FAST
@given(value=json_values(keys=WIRE_KEYS | st.text(max_size=6)))
def test_arbitrary_json_decodes_or_raises_wire_format_error(cls: Any, value: Any) -> None:
    decode_or_reject(json.dumps(value), cls)


def mutate(value: Any, data: st.DataObject) -> Any:
    """Replace, drop or add one thing somewhere in a decoded JSON value."""
    if isinstance(value, dict) and value and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(value)))
        return {**value, key: mutate(value[key], data)}
    if isinstance(value, list) and value and data.draw(st.booleans()):
        index = data.draw(st.integers(0, len(value) - 1))
        return [*value[:index], mutate(value[index], data), *value[index + 1 :]]
    action = data.draw(st.sampled_from(["replace", "drop", "add"]))
    if action == "drop" and isinstance(value, dict) and value:
        key = data.draw(st.sampled_from(sorted(value)))
        return {name: item for name, item in value.items() if name != key}
    if action == "add" and isinstance(value, dict):
        return {**value, data.draw(WIRE_KEYS): data.draw(json_values(keys=WIRE_KEYS))}
    return data.draw(json_values(keys=WIRE_KEYS))


@pytest.mark.parametrize("cls", MAIN_TYPES, ids=MAIN_TYPE_IDS)
@FAST
@given(data=st.data())
def test_mutated_messages_decode_or_raise_wire_format_error(cls: Any, data: st.DataObject) -> None:
    valid = json.loads(to_json(data.draw(for_type(cls))))
    decode_or_reject(json.dumps(mutate(valid, data)), cls)
