"""Bad input: one exception class, a sentence naming the field and its path, and strict types."""

from __future__ import annotations

import json
from typing import Any

import pytest

from paddler_trio.protocol import (
    AgentBoundMessage,
    BalancerBoundMessage,
    BalancerDesiredState,
    ContinueFromConversationHistoryParams,
    ContinueFromRawPromptParams,
    GenerateEmbeddingBatchParams,
    GeneratedTokenResult,
    InferenceParameters,
    InferenceServerBoundMessage,
    RmsNormNormalization,
    TokenUsage,
    WireFormatError,
    from_json,
    structure,
    to_json,
    unstructure,
)


def error_of(text: str, cls: Any) -> str:
    with pytest.raises(WireFormatError) as caught:
        from_json(text, cls)
    assert not isinstance(caught.value, ExceptionGroup)
    assert caught.value.__cause__ is None
    return str(caught.value)


def test_wire_format_error_is_a_value_error() -> None:
    assert issubclass(WireFormatError, ValueError)


@pytest.mark.parametrize(
    ("text", "cls", "message"),
    [
        (
            '{"max_tokens":1,"raw_prompt":"x","foo":1}',
            ContinueFromRawPromptParams,
            'unknown field "foo" in ContinueFromRawPromptParams',
        ),
        (
            '{"raw_prompt":"x"}',
            ContinueFromRawPromptParams,
            'missing field "max_tokens" in ContinueFromRawPromptParams',
        ),
        ("{}", ContinueFromRawPromptParams, 'missing fields "max_tokens", "raw_prompt" in ContinueFromRawPromptParams'),
        (
            '{"max_tokens":"10","raw_prompt":"x"}',
            ContinueFromRawPromptParams,
            'invalid value for field "max_tokens" in ContinueFromRawPromptParams: expected an integer, got a string'
            " (at $.max_tokens)",
        ),
        ("[1]", ContinueFromRawPromptParams, "expected an object for ContinueFromRawPromptParams, got an array"),
        ("{", ContinueFromRawPromptParams, "invalid JSON: Expecting property name enclosed in double quotes"),
        ("NaN", TokenUsage, "invalid JSON: NaN is not valid JSON"),
        (b'"\xff"', GeneratedTokenResult, "invalid JSON: 'utf-8' codec can't decode byte 0xff"),
        (
            '{"Request":{"id":"r","request":{"ContinueFromRawPrompt":{"raw_prompt":"x","max_tokens":1,"extra":0}}}}',
            InferenceServerBoundMessage,
            'unknown field "extra" in ContinueFromRawPromptParams (at $.Request.request.ContinueFromRawPrompt)',
        ),
        (
            '{"Request":{"id":"r","request":{"GenerateEmbeddingBatch":{}}}}',
            InferenceServerBoundMessage,
            'unknown variant "GenerateEmbeddingBatch" of InferenceRequest (expected one of '
            '"ContinueFromConversationHistory", "ContinueFromRawPrompt") (at $.Request.request)',
        ),
        (
            '{"Request":{"id":7,"request":"GetModelMetadata"}}',
            AgentBoundMessage,
            "expected a string, got an integer (at $.Request.id)",
        ),
        (
            '{"Request":{"id":"r","request":"GetModelMetadata","jsonrpc":"2.0"}}',
            AgentBoundMessage,
            'unknown field "jsonrpc" in RequestEnvelope (at $.Request)',
        ),
        (
            '{"Notification":"RegisterAgent"}',
            BalancerBoundMessage,
            'variant "RegisterAgent" of Notification needs a payload: {"RegisterAgent": ...} (at $.Notification)',
        ),
        (
            '{"Notification":{"DeregisterAgent":{}}}',
            BalancerBoundMessage,
            'variant "DeregisterAgent" of Notification takes no payload: write it as the string "DeregisterAgent"'
            " (at $.Notification)",
        ),
        (
            '{"Response":{"generated_by":null,"response":{"Embedding":"Done"}}}',
            BalancerBoundMessage,
            'missing field "request_id" in ResponseEnvelope (at $.Response)',
        ),
        (
            '{"Response":{"generated_by":null,"request_id":"r","response":{"GeneratedToken":{"Done":{"usage":{"x":1}}}}}}',
            BalancerBoundMessage,
            'unknown field "x" in TokenUsage (at $.Response.response.GeneratedToken.Done.usage)',
        ),
        (
            '{"Response":{"generated_by":null,"request_id":"r","response":{"Embedding":{"Done":null}}}}',
            BalancerBoundMessage,
            'variant "Done" of EmbeddingResult takes no payload',
        ),
        ('{"A":1,"B":2}', GeneratedTokenResult, "expected a GeneratedTokenResult variant"),
        ("[]", GeneratedTokenResult, "got an array"),
        (
            '{"input_batch":[{"id":"a"}],"normalization_method":"L1"}',
            GenerateEmbeddingBatchParams,
            'missing field "content" in EmbeddingInputDocument (at $.input_batch[0]); unknown variant "L1" of '
            'NormalizationMethod (expected one of "None", "L2", "RmsNorm") (at $.normalization_method)',
        ),
        (
            '{"add_generation_prompt":true,"conversation_history":[{"role":"user","content":null}],'
            '"enable_thinking":false,"max_tokens":5}',
            ContinueFromConversationHistoryParams,
            'invalid value for field "content" in ConversationMessage: expected a string or an array, got null'
            " (at $.conversation_history[0].content)",
        ),
        (
            '{"add_generation_prompt":true,"conversation_history":[{"role":"tool","content":"x","refusal":"1"}],'
            '"enable_thinking":false,"max_tokens":5}',
            ContinueFromConversationHistoryParams,
            'unknown field "refusal" in ConversationMessage (at $.conversation_history[0])',
        ),
        (
            '{"add_generation_prompt":true,"conversation_history":[{"role":"u","content":[{"type":"video","url":"x"}]}],'
            '"enable_thinking":false,"max_tokens":5}',
            ContinueFromConversationHistoryParams,
            'unknown type "video" of ContentPart (expected one of "text", "image_url") '
            "(at $.conversation_history[0].content[0])",
        ),
        (
            '{"add_generation_prompt":true,"conversation_history":[],"enable_thinking":false,"max_tokens":5,'
            '"tools":[{"type":"function","function":{"name":"f"}}]}',
            ContinueFromConversationHistoryParams,
            'missing field "description" in FunctionDefinition (at $.tools[0].function)',
        ),
        (
            '{"add_generation_prompt":true,"conversation_history":[],"enable_thinking":false,"max_tokens":5,'
            '"tools":[{"type":"function","function":{"name":"f","description":"d","parameters":'
            '{"type":"object","$defs":{}}}}]}',
            ContinueFromConversationHistoryParams,
            'unknown field "$defs" in ParametersSchema (at $.tools[0].function.parameters)',
        ),
        (
            '{"max_tokens":1,"raw_prompt":"x","grammar":{"schema":"{}"}}',
            ContinueFromRawPromptParams,
            'missing field "type" in GrammarConstraint (at $.grammar)',
        ),
        (
            '{"max_tokens":1,"raw_prompt":"x","grammar":{"type":"json_schema","schema":{}}}',
            ContinueFromRawPromptParams,
            'invalid value for field "schema" in JsonSchemaGrammar: expected a string, got an object'
            " (at $.grammar.schema)",
        ),
        (
            '{"max_tokens":1,"raw_prompt":"x","stop":"END"}',
            ContinueFromRawPromptParams,
            'invalid value for field "stop" in ContinueFromRawPromptParams: expected an array, got a string'
            " (at $.stop)",
        ),
        (
            '{"max_tokens":1,"raw_prompt":"x","stop":["a",1]}',
            ContinueFromRawPromptParams,
            "expected a string, got an integer (at $.stop[1])",
        ),
    ],
)
def test_error_messages(text: str | bytes, cls: Any, message: str) -> None:
    assert message in error_of(text, cls)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("max_tokens", "5", "an integer"),
        ("max_tokens", True, "an integer"),
        ("max_tokens", 5.0, "an integer"),
        ("max_tokens", None, "an integer"),
        ("raw_prompt", 5, "a string"),
        ("raw_prompt", ["x"], "a string"),
        ("temperature", "0.5", "a number"),
        ("temperature", False, "a number"),
        ("seed", 1.5, "an integer"),
    ],
)
def test_types_are_strict(field: str, value: Any, expected: str) -> None:
    data = {"max_tokens": 5, "raw_prompt": "x", field: value}
    with pytest.raises(WireFormatError, match=f"expected {expected}"):
        structure(data, ContinueFromRawPromptParams)


def test_an_integer_is_accepted_for_a_float() -> None:
    assert structure({"RmsNorm": {"epsilon": 1}}, RmsNormNormalization) == RmsNormNormalization(1.0)
    assert to_json(structure({"RmsNorm": {"epsilon": 1}}, RmsNormNormalization)) == '{"RmsNorm":{"epsilon":1.0}}'


def test_inference_parameters_require_every_field() -> None:
    data = unstructure(InferenceParameters())
    del data["top_p"]
    with pytest.raises(WireFormatError, match=r'^missing field "top_p" in InferenceParameters$'):
        structure(data, InferenceParameters)


def test_every_problem_is_reported_at_once() -> None:
    data = unstructure(BalancerDesiredState.default())
    data["inference_parameters"]["k_cache_dtype"] = "Q2"
    data["model"] = {"Url": {"href": "x"}}
    data["use_chat_template_override"] = 1
    message = error_of(json.dumps(data), BalancerDesiredState)
    assert 'for CacheDtype, got "Q2" (at $.inference_parameters.k_cache_dtype)' in message
    assert 'missing field "url" in UrlModel (at $.model.Url)' in message
    assert 'unknown field "href" in UrlModel (at $.model.Url)' in message
    assert "expected a boolean, got an integer (at $.use_chat_template_override)" in message


def test_deeply_nested_json_is_a_wire_format_error() -> None:
    with pytest.raises(WireFormatError):
        from_json("[" * 100_000 + "]" * 100_000, GeneratedTokenResult)
