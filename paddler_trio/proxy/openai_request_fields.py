"""Typed reading of an OpenAI request body, field by field, with OpenAI's error wording.

OpenAI request objects accept keys they do not know (Paddler ignores them too), so bodies are
read field by field rather than decoded into strict wire types. Every problem is a 400
naming the offending parameter by its path (`messages[1].role`), with OpenAI's codes:
`missing_required_parameter`, `invalid_type`, `invalid_value`, `integer_below_min_value` ...
"""

from __future__ import annotations

import json
from typing import Any

from paddler_trio.proxy.openai_errors import OpenAIError, invalid_value, missing_parameter, unsupported


def parse_body(body: bytes) -> "RequestObject":
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise OpenAIError(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
            "HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)",
            code="invalid_json",
        ) from None
    if not isinstance(data, dict):
        raise OpenAIError(400, "The request body must be a JSON object.", code="invalid_type")
    return RequestObject(data, "")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def invalid_type(param: str, expected: str, value: Any) -> OpenAIError:
    return OpenAIError(
        400,
        f"Invalid type for '{param}': expected {expected}, but got {_kind(value)} instead.",
        param=param,
        code="invalid_type",
    )


def not_one_of(param: str, value: Any, supported: tuple[str, ...]) -> OpenAIError:
    choices = ", ".join(f"'{choice}'" for choice in supported)
    return invalid_value(param, f"Invalid value: {json.dumps(value)[:80]}. Supported values are: {choices}.")


class RequestObject:
    """One JSON object of a request, and where it is (`path` prefixes the parameter names)."""

    def __init__(self, data: dict[str, Any], path: str) -> None:
        self.data = data
        self.path = path

    def param(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def present(self, name: str) -> bool:
        """Given and not null (OpenAI treats an explicit null as absent)."""
        return self.data.get(name) is not None

    def _value(self, name: str, required: bool) -> Any:
        value = self.data.get(name)
        if value is None and required:
            raise missing_parameter(self.param(name))
        return value

    def string(self, name: str, *, required: bool = False) -> str | None:
        value = self._value(name, required)
        if value is not None and not isinstance(value, str):
            raise invalid_type(self.param(name), "a string", value)
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.data.get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise invalid_type(self.param(name), "a boolean", value)
        return value

    def integer(self, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int | None:
        value = self.data.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid_type(self.param(name), "an integer", value)
        if minimum is not None and value < minimum:
            raise invalid_value(
                self.param(name),
                f"Invalid '{self.param(name)}': integer below minimum value. "
                f"Expected a value >= {minimum}, but got {value} instead.",
                code="integer_below_min_value",
            )
        if maximum is not None and value > maximum:
            raise invalid_value(
                self.param(name),
                f"Invalid '{self.param(name)}': integer above maximum value. "
                f"Expected a value <= {maximum}, but got {value} instead.",
                code="integer_above_max_value",
            )
        return value

    def number(self, name: str, *, minimum: float, maximum: float) -> float | None:
        value = self.data.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise invalid_type(self.param(name), "a decimal", value)
        if value < minimum:
            raise invalid_value(
                self.param(name),
                f"Invalid '{self.param(name)}': decimal below minimum value. "
                f"Expected a value >= {minimum}, but got {value} instead.",
                code="decimal_below_min_value",
            )
        if value > maximum:
            raise invalid_value(
                self.param(name),
                f"Invalid '{self.param(name)}': decimal above maximum value. "
                f"Expected a value <= {maximum}, but got {value} instead.",
                code="decimal_above_max_value",
            )
        return float(value)

    def choice(self, name: str, supported: tuple[str, ...], *, required: bool = False) -> str | None:
        value = self._value(name, required)
        if value is not None and value not in supported:
            if not isinstance(value, str):
                raise invalid_type(self.param(name), "a string", value)
            raise not_one_of(self.param(name), value, supported)
        return value

    def object(self, name: str, *, required: bool = False) -> RequestObject | None:
        value = self._value(name, required)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise invalid_type(self.param(name), "an object", value)
        return RequestObject(value, self.param(name))

    def array(self, name: str, *, required: bool = False) -> list[Any] | None:
        value = self._value(name, required)
        if value is not None and not isinstance(value, list):
            raise invalid_type(self.param(name), "an array", value)
        return value

    def objects(self, name: str, *, required: bool = False) -> list[RequestObject] | None:
        """An array whose every item is an object."""
        items = self.array(name, required=required)
        if items is None:
            return None
        found = []
        for index, item in enumerate(items):
            param = f"{self.param(name)}[{index}]"
            if not isinstance(item, dict):
                raise invalid_type(param, "an object", item)
            found.append(RequestObject(item, param))
        return found

    def refuse_truthy(self, *names: str) -> None:
        """Fields this service does not implement: harmless when absent, false or null; a 400 otherwise."""
        for name in names:
            if self.data.get(name):
                raise unsupported(self.param(name), f"'{self.param(name)}' is not supported by this server.")
