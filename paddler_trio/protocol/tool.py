"""A tool the model may call: ``{"type": "function", "function": {"name", "description", "parameters"?}}``."""

from __future__ import annotations

from typing import Any

import attrs


@attrs.frozen
class ParametersSchema:
    """The top level of a tool's JSON schema; only these four keys are accepted.

    Absent optional keys are omitted when serialised. The attribute ``additionalProperties``
    keeps its JSON spelling.
    """

    type: str
    properties: dict[str, Any] | None = None
    required: tuple[str, ...] | None = None
    additionalProperties: Any = None  # noqa: N815 - the JSON key

    def validate(self) -> list[str]:
        """Every required name missing from ``properties`` (Paddler's check)."""
        if self.required is None or self.properties is None:
            return []
        return [
            f"Required field '{name}' not found in properties" for name in self.required if name not in self.properties
        ]


@attrs.frozen
class FunctionDefinition:
    """A function's name, description (required in the native API) and optional parameter schema."""

    name: str
    description: str
    parameters: ParametersSchema | None = None


@attrs.frozen
class FunctionTool:
    """``{"type": "function", "function": {...}}``, the only kind of tool."""

    function: FunctionDefinition

    def validate(self) -> list[str]:
        """Problems with the tool's parameter schema."""
        return [] if self.function.parameters is None else self.function.parameters.validate()


Tool = FunctionTool
