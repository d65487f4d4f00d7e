"""A function tool's `parameters` from an OpenAI request, cleaned to the native schema: unknown
top-level keys dropped, `$ref`s into dropped `$defs` inlined, what cannot be kept a 400."""

from __future__ import annotations

import json
import logging
from typing import Any

import jsonschema
import pytest

from paddler_trio.proxy.openai_errors import OpenAIError
from paddler_trio.proxy.openai_request_fields import RequestObject
from paddler_trio.proxy.openai_tool_parameters import tool_parameters
from paddler_trio.protocol import ParametersSchema, unstructure

PARAM = "tools[0].function.parameters"


def cleaned(parameters: dict[str, Any], name: str = "t") -> dict[str, Any]:
    schema = tool_parameters(RequestObject(parameters, PARAM), name)
    assert isinstance(schema, ParametersSchema)
    return json.loads(json.dumps(unstructure(schema)))


def refused(parameters: dict[str, Any]) -> OpenAIError:
    with pytest.raises(OpenAIError) as error:
        tool_parameters(RequestObject(parameters, PARAM), "t")
    assert error.value.status == 400
    return error.value


def test_opencode_schema_keeps_the_four_native_keys() -> None:
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {"filePath": {"type": "string", "description": "The path to the file to read"}},
        "required": ["filePath"],
        "additionalProperties": False,
        "description": "Read a file",
    }
    assert cleaned(schema) == {key: schema[key] for key in ("type", "properties", "required", "additionalProperties")}


def test_type_defaults_to_object_and_nested_keys_are_kept() -> None:
    properties = {"url": {"type": "string", "format": "uri", "default": "x", "title": "URL", "x-extra": 1}}
    assert cleaned({"properties": properties, "title": "Fetch"}) == {"type": "object", "properties": properties}


def test_pydantic_defs_are_inlined_and_arguments_are_checked_as_before() -> None:
    # The shape of an MCP server's tool written with pydantic (a nested model and an enum).
    schema = {
        "$defs": {
            "Unit": {"enum": ["celsius", "fahrenheit"], "title": "Unit", "type": "string"},
            "Place": {
                "properties": {"city": {"type": "string"}, "unit": {"$ref": "#/$defs/Unit", "default": "celsius"}},
                "required": ["city"],
                "title": "Place",
                "type": "object",
            },
        },
        "properties": {"place": {"$ref": "#/$defs/Place"}, "days": {"anyOf": [{"type": "integer"}, {"type": "null"}]}},
        "required": ["place"],
        "title": "forecastArguments",
        "type": "object",
    }
    result = cleaned(schema)
    assert "$defs" not in result and "title" not in result
    place = result["properties"]["place"]
    assert place["properties"]["unit"] == {
        "enum": ["celsius", "fahrenheit"],
        "title": "Unit",
        "type": "string",
        "default": "celsius",
    }
    for arguments in (
        {"place": {"city": "Oslo"}},
        {"place": {"city": "Oslo", "unit": "kelvin"}},
        {"place": {"unit": "celsius"}},
        {"place": {"city": "Oslo"}, "days": "3"},
        {},
    ):
        original = jsonschema.Draft202012Validator(schema).is_valid(arguments)
        assert jsonschema.Draft202012Validator(result).is_valid(arguments) is original, arguments


def test_draft_7_definitions_and_a_top_level_ref_are_inlined() -> None:
    schema = {
        "$ref": "#/definitions/Params",
        "definitions": {
            "Params": {
                "type": "object",
                "properties": {"path": {"$ref": "#/definitions/Path"}},
                "required": ["path"],
                "additionalProperties": False,
            },
            "Path": {"type": "string", "minLength": 1},
        },
        "$schema": "http://json-schema.org/draft-07/schema#",
    }
    assert cleaned(schema) == {
        "type": "object",
        "properties": {"path": {"type": "string", "minLength": 1}},
        "required": ["path"],
        "additionalProperties": False,
    }


def test_a_ref_beside_validation_keywords_becomes_all_of() -> None:
    schema = {
        "properties": {"n": {"$ref": "#/$defs/Count", "maximum": 9}},
        "$defs": {"Count": {"type": "integer", "minimum": 1}},
    }
    assert cleaned(schema)["properties"]["n"] == {"allOf": [{"type": "integer", "minimum": 1}, {"maximum": 9}]}


def test_refs_into_kept_keys_and_data_values_are_left_alone() -> None:
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "string"},
            "b": {"$ref": "#/properties/a"},
            "c": {"const": {"$ref": "#/$defs/Nope"}, "default": {"$ref": "#/$defs/Nope"}},
            "$ref": {"type": "string"},
        },
        "additionalProperties": {"$ref": "#/$defs/Extra"},
        "$defs": {"Extra": {"type": "number"}},
    }
    result = cleaned(schema)
    assert result["properties"] == schema["properties"]
    assert result["additionalProperties"] == {"type": "number"}


def test_a_recursive_definition_is_a_400_naming_it() -> None:
    schema = {
        "type": "object",
        "properties": {"tree": {"$ref": "#/$defs/Node"}},
        "$defs": {"Node": {"type": "object", "properties": {"children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}}}},
    }
    error = refused(schema)
    assert error.param == PARAM
    assert "'#/$defs/Node'" in error.message and "recursive" in error.message


def test_a_ref_to_a_missing_definition_is_a_400() -> None:
    error = refused({"type": "object", "properties": {"a": {"$ref": "#/$defs/Missing"}}})
    assert "'#/$defs/Missing'" in error.message and "does not define" in error.message


def test_required_names_must_exist_and_be_strings() -> None:
    assert "Required field 'x' not found in properties" in refused({"properties": {}, "required": ["x"]}).message
    assert refused({"properties": {}, "required": [1]}).param == f"{PARAM}.required[0]"


def test_drops_are_logged_debug_and_validation_keywords_warning(caplog: pytest.LogCaptureFixture) -> None:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {"a": {"type": "string"}},
        "anyOf": [{"required": ["a"]}],
        "minProperties": 1,
    }
    with caplog.at_level(logging.DEBUG, logger="paddler_trio.proxy.openai_tool_parameters"):
        cleaned(schema, name="edit")
    by_level = {record.levelno: record.getMessage() for record in caplog.records}
    assert "'edit'" in by_level[logging.WARNING] and "anyOf, minProperties" in by_level[logging.WARNING]
    assert "$schema" in by_level[logging.DEBUG] and "anyOf" not in by_level[logging.DEBUG]


def test_a_ref_beside_a_type_is_not_merged_over_its_target() -> None:
    schema = {"properties": {"n": {"$ref": "#/$defs/Id", "type": "string"}}, "$defs": {"Id": {"type": "integer"}}}
    assert cleaned(schema)["properties"]["n"] == {"allOf": [{"type": "integer"}, {"type": "string"}]}


def test_definitions_that_grow_exponentially_once_inlined_are_a_400() -> None:
    definitions = {f"D{level}": {"allOf": [{"$ref": f"#/$defs/D{level + 1}"}] * 2} for level in range(40)}
    definitions["D40"] = {"type": "string"}
    error = refused({"type": "object", "properties": {"a": {"$ref": "#/$defs/D0"}}, "$defs": definitions})
    assert "grows beyond 100000 objects and arrays" in error.message
