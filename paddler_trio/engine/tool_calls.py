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
import referencing.exceptions

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
_FENCE = "```"

# Replies that may be a tool call written without markers start like this.
BARE_TOOL_CALL_OPENINGS = ("{", "[", _FENCE)


def _strip_wrappers(text: str) -> str:
    for marker in _MARKERS:
        text = text.replace(marker, "")
    text = text.strip()
    if text.startswith(_FENCE):
        text = text[len(_FENCE) :]
        text = text[text.find("\n") + 1 :] if "\n" in text else ""
        if text.rstrip().endswith(_FENCE):
            text = text.rstrip()[: -len(_FENCE)]
    return text.strip()


def _json_objects(text: str) -> list[Any] | None:
    """One JSON value, a JSON list of calls, or several values one after another."""
    if not text:
        return None
    decoder = json.JSONDecoder()
    values: list[Any] = []
    position = 0
    while position < len(text):
        try:
            value, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            return None
        values.extend(value if isinstance(value, list) else [value])
        while position < len(text) and text[position] in " \t\r\n,":
            position += 1
    return values


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
        """Events for one `<tool_call>` section (or a duck-typed reply, see `parse_bare_reply`)."""
        objects = _json_objects(_strip_wrappers(raw_text))
        if objects is None:
            return [UnrecognizedToolCallFormat(text=raw_text, ffi_error_message="the tool call is not valid JSON")]
        calls: list[ParsedToolCall] = []
        problems: list[str] = []
        for decoded in objects:
            if not isinstance(decoded, dict) or not isinstance(decoded.get("name"), str):
                return [
                    UnrecognizedToolCallFormat(
                        text=raw_text, ffi_error_message='expected JSON objects with a string "name"'
                    )
                ]
            call, problem = self._call(decoded)
            calls.append(call)
            if problem is not None:
                problems.append(problem)
        results: list[GeneratedTokenResult] = [ToolCallParsed(tuple(calls))]
        if problems:
            results.append(ToolCallValidationFailed(tuple(problems)))
        return results

    def parse_bare_reply(self, text: str) -> list[GeneratedTokenResult] | None:
        """Models that skip the markers write the call as the whole reply (`{"name": ...}`,
        possibly fenced). Returns the events when the reply calls a known tool, else None."""
        objects = _json_objects(_strip_wrappers(text))
        if not objects or not all(
            isinstance(decoded, dict) and decoded.get("name") in self._validators for decoded in objects
        ):
            return None
        return self.parse_section(text)

    def _call(self, decoded: dict[str, Any]) -> tuple[ParsedToolCall, str | None]:
        name: str = decoded["name"]
        raw_arguments: Any = decoded.get("arguments", decoded.get("parameters", {}))
        if isinstance(raw_arguments, str):
            try:
                arguments_value: Any = json.loads(raw_arguments)
            except json.JSONDecodeError:
                return ParsedToolCall(id=_call_id(), name=name, arguments=InvalidJsonArguments(raw_arguments)), None
        else:
            arguments_value = raw_arguments
        call = ParsedToolCall(id=_call_id(), name=name, arguments=ValidJsonArguments(arguments_value))
        return call, self._validation_problem(name, arguments_value)

    def _validation_problem(self, name: str, arguments: Any) -> str | None:
        if name not in self._validators:
            return f"the model called unknown tool {name!r}"
        validator = self._validators[name]
        if validator is None:
            return None
        try:
            error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
        except referencing.exceptions.Unresolvable as unresolvable:
            # check_schema does not follow references; a dangling one shows only now.
            return f"the arguments of {name!r} cannot be checked: its schema refers to {unresolvable.ref!r}, which it does not define"
        if error is None:
            return None
        return f"arguments of {name!r} do not match its schema: {error.message}"
