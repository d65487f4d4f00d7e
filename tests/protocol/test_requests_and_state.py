"""Request params (defaults, sampling overrides, tool schemas) and the desired states."""

from __future__ import annotations

import json

import pytest

from paddler_trio.protocol import (
    AgentDesiredState,
    BalancerDesiredState,
    CalledFunction,
    ChatTemplate,
    ContinueFromConversationHistoryParams,
    ContinueFromRawPromptParams,
    ConversationMessage,
    FunctionDefinition,
    FunctionTool,
    ImageUrl,
    ImageUrlPart,
    InferenceParameters,
    JsonSchemaGrammar,
    LocalToAgentModel,
    MessageToolCall,
    NoModel,
    ParametersSchema,
    TextPart,
    from_json,
    to_json,
)

WEATHER_TOOL_JSON = (
    '{"type":"function","function":{"name":"get_weather","description":"Weather by city","parameters":'
    '{"type":"object","properties":{"city":{"type":"string"}},"required":["city"],"additionalProperties":false}}}'
)


def conversation(**changes: object) -> ContinueFromConversationHistoryParams:
    fields: dict[str, object] = {
        "add_generation_prompt": True,
        "conversation_history": (ConversationMessage("user", "hi"),),
        "enable_thinking": False,
        "max_tokens": 8,
    }
    fields.update(changes)
    return ContinueFromConversationHistoryParams(**fields)  # type: ignore[arg-type]


def test_conversation_defaults_and_field_order() -> None:
    assert to_json(conversation()) == (
        '{"add_generation_prompt":true,"conversation_history":[{"role":"user","content":"hi"}],'
        '"enable_thinking":false,"grammar":null,"max_tokens":8,"parse_tool_calls":false,"tools":[]}'
    )


def test_sampling_overrides_are_optional_and_omitted_when_absent() -> None:
    raw = ContinueFromRawPromptParams(max_tokens=4, raw_prompt="x", temperature=0.0, seed=7, stop=("\n",))
    text = to_json(raw)
    assert text == '{"grammar":null,"max_tokens":4,"raw_prompt":"x","temperature":0.0,"seed":7,"stop":["\\n"]}'
    assert from_json(text, ContinueFromRawPromptParams) == raw
    with_all = conversation(temperature=0.5, top_p=0.9, top_k=40, min_p=0.1, seed=1, stop=("END", "STOP"))
    assert from_json(to_json(with_all), ContinueFromConversationHistoryParams) == with_all
    assert with_all.validate() == []


def test_sampling_overrides_are_validated() -> None:
    assert conversation(temperature=-1.0, top_k=-2).validate() == [
        "temperature must not be negative (got -1.0)",
        "top_k must not be negative (got -2)",
    ]
    assert ContinueFromRawPromptParams(max_tokens=1, raw_prompt="", top_p=2.0).validate() == [
        "top_p must be greater than 0 and at most 1 (got 2.0)"
    ]


def test_multipart_content_and_its_helpers() -> None:
    message = ConversationMessage(
        "user", (TextPart("What is "), ImageUrlPart(ImageUrl("data:image/png;base64,AA")), TextPart("this?"))
    )
    text = to_json(message)
    assert text == (
        '{"role":"user","content":[{"type":"text","text":"What is "},'
        '{"type":"image_url","image_url":{"url":"data:image/png;base64,AA"}},{"type":"text","text":"this?"}]}'
    )
    assert from_json(text, ConversationMessage) == message
    assert message.text == "What is this?"
    assert message.image_urls == ("data:image/png;base64,AA",)
    assert ConversationMessage("user", "plain").image_urls == ()


def test_message_tool_call_keys_are_optional_and_omitted_when_absent() -> None:
    assert to_json(ConversationMessage("user", "hi")) == '{"role":"user","content":"hi"}'
    call = ConversationMessage(
        "assistant", "", tool_calls=(MessageToolCall("call_1", CalledFunction("get_weather", '{"city":"Paris"}')),)
    )
    call_json = (
        '{"role":"assistant","content":"","tool_calls":[{"type":"function","id":"call_1",'
        '"function":{"name":"get_weather","arguments":"{\\"city\\":\\"Paris\\"}"}}]}'
    )
    assert to_json(call) == call_json
    assert from_json(call_json, ConversationMessage) == call
    answer = from_json('{"role":"tool","content":"21","tool_call_id":"call_1","name":"get_weather"}', ConversationMessage)
    assert (answer.tool_call_id, answer.name) == ("call_1", "get_weather")


def test_tool_schema_keeps_its_json_spelling_and_omits_absent_keys() -> None:
    tool = from_json(WEATHER_TOOL_JSON, FunctionTool)
    assert tool.function.parameters == ParametersSchema(
        type="object", properties={"city": {"type": "string"}}, required=("city",), additionalProperties=False
    )
    assert to_json(tool) == WEATHER_TOOL_JSON
    bare = FunctionTool(FunctionDefinition(name="now", description="Current time"))
    assert to_json(bare) == '{"type":"function","function":{"name":"now","description":"Current time"}}'
    assert to_json(ParametersSchema(type="object")) == '{"type":"object"}'
    assert from_json('{"type":"object","additionalProperties":null}', ParametersSchema) == ParametersSchema("object")


@pytest.mark.parametrize(
    ("schema", "problems"),
    [
        (ParametersSchema("object", {"a": {}}, ("a",)), []),
        (ParametersSchema("object", None, ("a",)), []),
        (ParametersSchema("object", {"a": {}}, None), []),
        (
            ParametersSchema("object", {"a": {}}, ("a", "b", "c")),
            ["Required field 'b' not found in properties", "Required field 'c' not found in properties"],
        ),
    ],
)
def test_tool_schema_validation(schema: ParametersSchema, problems: list[str]) -> None:
    assert schema.validate() == problems
    assert conversation(tools=(FunctionTool(FunctionDefinition("f", "d", schema)),)).validate() == problems


def test_json_schema_grammar_is_a_json_encoded_string() -> None:
    schema = json.dumps({"type": "object", "properties": {"ok": {"type": "boolean"}}})
    raw = ContinueFromRawPromptParams(max_tokens=4, raw_prompt="x", grammar=JsonSchemaGrammar(schema))
    assert json.loads(to_json(raw))["grammar"] == {"type": "json_schema", "schema": schema}
    assert from_json(to_json(raw), ContinueFromRawPromptParams) == raw


def test_balancer_default_state() -> None:
    state = BalancerDesiredState.default()
    assert state == BalancerDesiredState(
        chat_template_override=None,
        inference_parameters=InferenceParameters(),
        model=NoModel(),
        multimodal_projection=NoModel(),
        use_chat_template_override=False,
    )
    assert from_json(to_json(state), BalancerDesiredState) == state


def test_chat_template_override_may_be_omitted_but_the_flag_may_not() -> None:
    data = json.loads(to_json(BalancerDesiredState.default()))
    del data["chat_template_override"]
    assert from_json(json.dumps(data), BalancerDesiredState) == BalancerDesiredState.default()
    del data["use_chat_template_override"]
    with pytest.raises(ValueError, match='missing field "use_chat_template_override" in BalancerDesiredState'):
        from_json(json.dumps(data), BalancerDesiredState)


@pytest.mark.parametrize("use_override", [True, False])
def test_agent_state_keeps_the_override_only_when_used(use_override: bool) -> None:
    template = ChatTemplate("{{ messages }}")
    state = BalancerDesiredState(
        chat_template_override=template,
        inference_parameters=InferenceParameters.deterministic(),
        model=LocalToAgentModel("/m.gguf"),
        multimodal_projection=NoModel(),
        use_chat_template_override=use_override,
    )
    assert state.to_agent_desired_state() == AgentDesiredState(
        chat_template_override=template if use_override else None,
        inference_parameters=InferenceParameters.deterministic(),
        model=LocalToAgentModel("/m.gguf"),
        multimodal_projection=NoModel(),
    )
    assert "use_chat_template_override" not in to_json(state.to_agent_desired_state())
