"""The agent socket's fast path for token replies decodes exactly what the full decoder does,
and every other frame (or a slightly malformed token frame) gets the full decoder's answer;
a batched frame yields its messages in order, a bad one among them costing only itself."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paddler_trio.management.agent_message_decoding import decode_agent_frame, decode_agent_message
from paddler_trio.protocol import (
    BalancerBoundMessage,
    ContentToken,
    ReasoningToken,
    ResponseEnvelope,
    ToolCallToken,
    UndeterminableToken,
    WireFormatError,
    from_json,
    to_json,
)
from paddler_trio.protocol.reply_batching import batch_frame
from tests.protocol.strategies import for_type, json_values

TOKEN_CLASSES = (ContentToken, ReasoningToken, ToolCallToken, UndeterminableToken)


def full_decoder_outcome(text: str) -> Any:
    try:
        return from_json(text, BalancerBoundMessage)
    except WireFormatError as error:
        return ("WireFormatError", str(error))


def fast_path_outcome(text: str) -> Any:
    try:
        return decode_agent_message(text)
    except WireFormatError as error:
        return ("WireFormatError", str(error))


@given(
    token_class=st.sampled_from(TOKEN_CLASSES),
    token=st.text(),
    request_id=st.text(),
    generated_by=st.none() | st.text(),
)
def test_token_replies_decode_like_the_full_decoder(
    token_class: type[Any], token: str, request_id: str, generated_by: str | None
) -> None:
    text = to_json(ResponseEnvelope(generated_by=generated_by, request_id=request_id, response=token_class(token)))
    decoded = decode_agent_message(text)
    assert decoded == from_json(text, BalancerBoundMessage)
    assert type(decoded.response) is token_class


@given(message=for_type(BalancerBoundMessage))
def test_every_agent_message_decodes_like_the_full_decoder(message: Any) -> None:
    text = to_json(message)
    assert decode_agent_message(text) == from_json(text, BalancerBoundMessage)


ENVELOPE_KEYS = st.sampled_from(["Response", "generated_by", "request_id", "response", "GeneratedToken", "ContentToken"])


@given(value=json_values(ENVELOPE_KEYS))
def test_arbitrary_json_gets_the_full_decoders_answer(value: Any) -> None:
    text = json.dumps({"Response": value})
    assert fast_path_outcome(text) == full_decoder_outcome(text)


TOKEN_FRAME = {"Response": {"generated_by": None, "request_id": "r-1", "response": {"GeneratedToken": {"ContentToken": "Hi"}}}}


@pytest.mark.parametrize(
    "text",
    [
        '{"Response":{"generated_by":null,"request_id":"r-1","response":{"GeneratedToken":{"ContentToken":"Hi"}}}',
        '{"Response":{"generated_by":null,"request_id":"r-1","response":{"GeneratedToken":{"ContentToken":NaN}}}}',
        '{"Response":' + "[" * 100_000 + "]" * 100_000 + "}",
        json.dumps({"Response": {**TOKEN_FRAME["Response"], "extra": 1}}),
        json.dumps({"Response": {"request_id": "r-1", "response": TOKEN_FRAME["Response"]["response"]}}),
        json.dumps({"Response": {**TOKEN_FRAME["Response"], "request_id": 7}}),
        json.dumps({"Response": {**TOKEN_FRAME["Response"], "generated_by": 7}}),
        json.dumps({"Response": {**TOKEN_FRAME["Response"], "response": {"GeneratedToken": {"ContentToken": 7}}}}),
        json.dumps({"Response": {**TOKEN_FRAME["Response"], "response": {"GeneratedToken": {"Done": {}}}}}),
        json.dumps({"Response": {**TOKEN_FRAME["Response"], "response": {"GeneratedToken": {"NoSuchToken": "x"}}}}),
        json.dumps({"Response": {**TOKEN_FRAME["Response"], "response": {"GeneratedToken": "ContentToken"}}}),
        json.dumps({**TOKEN_FRAME, "Error": None}),
    ],
    ids=[
        "truncated",
        "nan",
        "deeply-nested",
        "extra-key",
        "generated-by-absent",
        "numeric-request-id",
        "numeric-generated-by",
        "numeric-token",
        "done-without-usage",
        "unknown-token-kind",
        "unit-token",
        "two-variants",
    ],
)
def test_frames_off_the_fast_path_get_the_full_decoders_answer(text: str) -> None:
    assert fast_path_outcome(text) == full_decoder_outcome(text)


@given(messages=st.lists(for_type(BalancerBoundMessage), min_size=1, max_size=6))
def test_a_batched_frame_decodes_to_its_messages_in_order(messages: list[Any]) -> None:
    frame = batch_frame([to_json(message) for message in messages])
    assert decode_agent_frame(frame) == ([from_json(to_json(m), BalancerBoundMessage) for m in messages], [])


def test_a_bad_message_in_a_batch_costs_only_itself() -> None:
    good = [to_json(ResponseEnvelope(generated_by=None, request_id=f"r-{n}", response=ContentToken("a"))) for n in (1, 2)]
    frame = batch_frame([good[0], '{"Response": {"request_id": 7}}', good[1]])
    messages, problems = decode_agent_frame(frame)
    assert [message.request_id for message in messages] == ["r-1", "r-2"]
    assert len(problems) == 1 and problems[0].startswith("message 1 of the frame:")


@pytest.mark.parametrize("frame", ["[", "[1,", '[{"Response": NaN}]', "nonsense", "{}"])
def test_a_frame_that_is_not_json_or_no_message_yields_a_problem_and_nothing_else(frame: str) -> None:
    messages, problems = decode_agent_frame(frame)
    assert messages == [] and len(problems) >= 1


def test_an_empty_batch_is_nothing_at_all() -> None:
    assert decode_agent_frame("[]") == ([], [])
