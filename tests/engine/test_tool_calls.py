"""Tool-call section parsing and validation (no model needed)."""

from __future__ import annotations

import pytest

from paddler_trio.engine.request_rejection import RequestRejected
from paddler_trio.engine.tool_calls import ToolCallParser
from paddler_trio.protocol import (
    FunctionDefinition,
    FunctionTool,
    InvalidJsonArguments,
    ParametersSchema,
    ToolCallParsed,
    ToolCallValidationFailed,
    ToolSchemaInvalid,
    UnrecognizedToolCallFormat,
    ValidJsonArguments,
)

WEATHER = FunctionTool(
    function=FunctionDefinition(
        name="get_weather",
        description="Weather in a city",
        parameters=ParametersSchema(type="object", properties={"city": {"type": "string"}}, required=("city",)),
    )
)
PARSER = ToolCallParser((WEATHER,))


def test_marked_section_is_parsed():
    [parsed] = PARSER.parse_section('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>')
    assert isinstance(parsed, ToolCallParsed)
    assert parsed.calls[0].name == "get_weather"
    assert parsed.calls[0].arguments == ValidJsonArguments({"city": "Oslo"})
    assert parsed.calls[0].id.startswith("call_")


def test_fenced_list_and_string_arguments():
    text = '```json\n[{"name": "get_weather", "arguments": "{\\"city\\": \\"Rome\\"}"}, {"name": "get_weather", "arguments": {"city": "Nice"}}]\n```'
    [parsed] = PARSER.parse_section(text)
    assert [call.arguments for call in parsed.calls] == [ValidJsonArguments({"city": "Rome"}), ValidJsonArguments({"city": "Nice"})]


def test_arguments_that_are_not_json_are_kept_as_text():
    [parsed] = PARSER.parse_section('{"name": "get_weather", "arguments": "city=Rome"}')
    assert parsed.calls[0].arguments == InvalidJsonArguments("city=Rome")


def test_schema_mismatch_and_unknown_tool_are_reported():
    parsed, failed = PARSER.parse_section('{"name": "get_weather", "arguments": {"town": "Rome"}}')
    assert isinstance(failed, ToolCallValidationFailed)
    assert "'city' is a required property" in failed.messages[0]
    _, unknown = PARSER.parse_section('{"name": "launch_rocket", "arguments": {}}')
    assert "unknown tool 'launch_rocket'" in unknown.messages[0]


def test_text_that_is_not_a_call_is_unrecognised():
    [result] = PARSER.parse_section("<tool_call>get_weather(Rome)</tool_call>")
    assert isinstance(result, UnrecognizedToolCallFormat)
    assert result.text == "<tool_call>get_weather(Rome)</tool_call>"


def test_bare_reply_counts_only_when_it_calls_a_known_tool():
    assert PARSER.parse_bare_reply('{"answer": 42}') is None
    assert PARSER.parse_bare_reply('{"name": "other", "arguments": {}}') is None
    assert PARSER.parse_bare_reply("{not json") is None
    assert isinstance(PARSER.parse_bare_reply('{"name": "get_weather", "arguments": {"city": "Rome"}}')[0], ToolCallParsed)


def test_invalid_tool_schema_is_refused_up_front():
    broken = FunctionTool(
        function=FunctionDefinition(
            name="broken", description="x", parameters=ParametersSchema(type="no-such-type", properties={})
        )
    )
    with pytest.raises(RequestRejected) as caught:
        ToolCallParser((broken,))
    assert isinstance(caught.value.result, ToolSchemaInvalid)


def test_a_reference_the_schema_cannot_resolve_is_a_validation_failure_not_a_crash():
    dangling = FunctionTool(
        function=FunctionDefinition(
            name="lookup",
            description="x",
            parameters=ParametersSchema(type="object", properties={"key": {"$ref": "#/$defs/missing"}}),
        )
    )
    parsed, failed = ToolCallParser((dangling,)).parse_section('{"name": "lookup", "arguments": {"key": 1}}')
    assert isinstance(parsed, ToolCallParsed)
    assert isinstance(failed, ToolCallValidationFailed)
    assert "/$defs/missing" in failed.messages[0]
