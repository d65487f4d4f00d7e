"""Parsing and validating the tool calls a model writes inside `<tool_call>` sections.

The section text is expected to hold one JSON object `{"name": ..., "arguments": ...}`
(Qwen, Hermes and most function-calling templates); arguments may be an object or a
JSON-encoded string. Each parsed call is checked against its tool's JSON Schema.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import jsonschema

from paddler_trio.protocol import (
    FunctionTool,
    InvalidJsonArguments,
    ParsedToolCall,
    ToolCallParsed,
    ToolCallValidationFailed,
    ToolSchemaInvalid,
    UnrecognizedToolCallFormat,
    ValidJsonArguments,
    GeneratedTokenResult,
    unstructure,
)
from paddler_trio.engine.request_rejection import RequestRejected

_MARKERS = ("<tool_call>", "</tool_call>")


def _call_id() -> str:
    return "call_" + secrets.token_hex(12)


class ToolCallParser:
    """Validators for one request's tools; turns a tool-call section into result events."""

    def __init__(self, tools: tuple[FunctionTool, ...]) -> None:
        self._validators: dict[str, jsonschema.protocols.Validator | None] = {}
        for tool in tools:
            schema = unstructure(tool.function.parameters) if tool.function.parameters is not None else None
            if schema is None:
                self._validators[tool.function.name] = None
                continue
            try:
                validator_class = jsonschema.validators.validator_for(schema)
                validator_class.check_schema(schema)
            except jsonschema.SchemaError as error:
                raise RequestRejected(
                    ToolSchemaInvalid(f"tool {tool.function.name!r} has an invalid JSON Schema: {error.message}")
                ) from error
            self._validators[tool.function.name] = validator_class(schema)

    def parse_section(self, raw_text: str) -> list[GeneratedTokenResult]:
        text = raw_text
        for marker in _MARKERS:
            text = text.replace(marker, "")
        text = text.strip()
        try:
            decoded = json.loads(text)
        except json.JSONDecodeError as error:
            return [UnrecognizedToolCallFormat(text=raw_text, ffi_error_message=f"not JSON: {error}")]
        if not isinstance(decoded, dict) or not isinstance(decoded.get("name"), str):
            return [
                UnrecognizedToolCallFormat(
                    text=raw_text, ffi_error_message='expected a JSON object with a string "name"'
                )
            ]
        name: str = decoded["name"]
        raw_arguments: Any = decoded.get("arguments", decoded.get("parameters", {}))
        if isinstance(raw_arguments, str):
            try:
                arguments_value: Any = json.loads(raw_arguments)
            except json.JSONDecodeError:
                call = ParsedToolCall(id=_call_id(), name=name, arguments=InvalidJsonArguments(raw_arguments))
                return [ToolCallParsed((call,))]
        else:
            arguments_value = raw_arguments
        call = ParsedToolCall(id=_call_id(), name=name, arguments=ValidJsonArguments(arguments_value))
        results: list[GeneratedTokenResult] = [ToolCallParsed((call,))]
        problem = self._validation_problem(name, arguments_value)
        if problem is not None:
            results.append(ToolCallValidationFailed((problem,)))
        return results

    def _validation_problem(self, name: str, arguments: Any) -> str | None:
        if name not in self._validators:
            return f"the model called unknown tool {name!r}"
        validator = self._validators[name]
        if validator is None:
            return None
        error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
        if error is None:
            return None
        return f"arguments of {name!r} do not match its schema: {error.message}"
