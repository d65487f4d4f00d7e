"""A function tool's `parameters` JSON Schema from an OpenAI request, as the native schema.

The native schema (`ParametersSchema`, Paddler's `RawParametersSchema`) knows four top-level
keys: `type` (default "object"), `properties`, `required` and `additionalProperties`; below
them anything goes. Coding agents send more at the top level (OpenCode: `$schema`; MCP tools:
`title`, `description`, `$defs`), and Paddler 4.1 drops what it does not know, so these routes
do too, while the native routes keep refusing it.

What a call's arguments are checked against stays as the client wrote it where it can:

- `$ref`s into a dropped key (`#/$defs/...`, `#/definitions/...`) are replaced by what they
  point at, so the definitions survive the drop of `$defs` (Paddler drops them as they are,
  leaving such `$ref`s pointing nowhere). A `$ref` with sibling validation keywords becomes
  an `allOf` of both. A top-level `$ref` (`{"$ref": "#/definitions/Params", "definitions":
  {...}}`) is replaced the same way first. A definition that refers to itself cannot be
  inlined, nor one that grows past `MAX_INLINED_NODES` when copied wherever it is used:
  either is a 400 naming it.
- Annotations and unknown keys (`$schema`, `title`, `description`, `x-...`) change no check:
  dropped, logged at debug level. Without `$schema` the agent checks arguments with the
  newest JSON Schema draft, which agrees with draft 7 on the keywords tool schemas use.
- Top-level validation keywords (`anyOf`, `minProperties`, `patternProperties` ...) have no
  place in the native schema: dropped as Paddler drops them, and logged at warning level,
  since the model's arguments are then no longer checked against them.
"""

from __future__ import annotations

import logging
from typing import Any

from paddler_trio.proxy.openai_errors import invalid_value
from paddler_trio.proxy.openai_request_fields import RequestObject, invalid_type
from paddler_trio.protocol import ParametersSchema

_logger = logging.getLogger(__name__)

KEPT_KEYS = ("type", "properties", "required", "additionalProperties")

# Keywords that make a JSON Schema refuse instances (draft 4 to 2020-12); any other key is an
# annotation or unknown, which the validator ignores.
VALIDATION_KEYWORDS = frozenset(
    {
        "$ref",
        "$dynamicRef",
        "$recursiveRef",
        "allOf",
        "anyOf",
        "oneOf",
        "not",
        "if",
        "then",
        "else",
        "enum",
        "const",
        "dependentSchemas",
        "dependentRequired",
        "dependencies",
        "patternProperties",
        "propertyNames",
        "unevaluatedProperties",
        "minProperties",
        "maxProperties",
        "items",
        "prefixItems",
        "additionalItems",
        "unevaluatedItems",
        "contains",
        "minContains",
        "maxContains",
        "minItems",
        "maxItems",
        "uniqueItems",
        "minLength",
        "maxLength",
        "pattern",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
    }
)

# Every keyword that checks something, the four kept ones included.
_CHECKING_KEYWORDS = VALIDATION_KEYWORDS | frozenset(KEPT_KEYS)
# Keys whose value is a map of names to schemas, not a schema.
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas", "dependencies"})
# Keys whose value is instance data, never searched for `$ref`s.
_DATA_KEYWORDS = frozenset({"enum", "const", "default", "examples"})
# Inlining copies a definition wherever it is used: definitions that use each other twice over
# grow exponentially. A tool's schema may reach this many objects and arrays once inlined.
MAX_INLINED_NODES = 100_000


def tool_parameters(parameters: RequestObject, tool_name: str) -> ParametersSchema:
    """The native schema of `parameters` (see the module's description); 400 on what cannot be kept."""
    inliner = _Inliner(parameters.data, parameters.path, tool_name)
    top = inliner.top_level()
    fields = RequestObject(top, parameters.path)
    kind = fields.string("type") or "object"
    properties = fields.object("properties")
    required = fields.array("required")
    if required is not None:
        for index, name in enumerate(required):
            if not isinstance(name, str):
                raise invalid_type(f"{fields.param('required')}[{index}]", "a string", name)
    additional = top.get("additionalProperties")
    schema = ParametersSchema(
        type=kind,
        properties=inliner.schema_map(properties.data) if properties is not None else None,
        required=tuple(required) if required is not None else None,
        additionalProperties=inliner.schema(additional),
    )
    problems = schema.validate()
    if problems:
        raise invalid_value(parameters.path, "Invalid schema for function parameters: " + "; ".join(problems))
    _log_dropped(tool_name, [key for key in top if key not in KEPT_KEYS], inliner.inlined)
    return schema


def _log_dropped(tool_name: str, dropped: list[str], inlined: int) -> None:
    loosening = [key for key in dropped if key in VALIDATION_KEYWORDS]
    if loosening:
        _logger.warning(
            "tool %r: dropped the top-level JSON Schema keywords %s of its parameters, which the native schema "
            "cannot hold; the model's arguments are no longer checked against them",
            tool_name,
            ", ".join(loosening),
        )
    others = [key for key in dropped if key not in VALIDATION_KEYWORDS]
    if others or inlined:
        _logger.debug(
            "tool %r: dropped the top-level keys %s of its parameters schema (%d $ref(s) into them inlined)",
            tool_name,
            ", ".join(others) or "(none)",
            inlined,
        )


class _Inliner:
    """Replaces `$ref`s that point into dropped top-level keys by their targets, resolved in
    the schema as the client sent it."""

    def __init__(self, root: dict[str, Any], param: str, tool_name: str) -> None:
        self.root = root
        self.param = param
        self.tool_name = tool_name
        self.inlined = 0
        self.nodes = 0  # objects and arrays of the schema once inlined
        self._expanding: list[str] = []
        self._done: dict[str, tuple[Any, int]] = {}

    def top_level(self) -> dict[str, Any]:
        """The top level, with a `$ref` into a dropped key replaced by its target's keys."""
        top = self.root
        seen: list[str] = []
        while isinstance(top.get("$ref"), str) and self._into_dropped(top["$ref"]):
            ref = top["$ref"]
            if ref in seen:
                raise self._recursive(ref)
            seen.append(ref)
            target = self._resolve(ref)
            if not isinstance(target, dict):
                raise invalid_value(
                    self.param,
                    f"Invalid schema for function parameters: the top-level '$ref' {ref!r} of tool "
                    f"{self.tool_name!r} must point at an object schema.",
                )
            self.inlined += 1
            top = {**{key: value for key, value in top.items() if key != "$ref"}, **target}
        return top

    def schema_map(self, schemas: dict[str, Any]) -> dict[str, Any]:
        return {name: self.schema(value) for name, value in schemas.items()}

    def schema(self, value: Any) -> Any:
        if isinstance(value, (list, dict)):
            self._count(1)
        if isinstance(value, list):
            return [self.schema(item) for item in value]
        if not isinstance(value, dict):
            return value
        result: dict[str, Any] = {}
        for key, item in value.items():
            if key in _DATA_KEYWORDS:
                result[key] = item
            elif key in _SCHEMA_MAPS and isinstance(item, dict):
                result[key] = self.schema_map(item)
            else:
                result[key] = self.schema(item)
        ref = result.get("$ref")
        if not isinstance(ref, str) or not self._into_dropped(ref):
            return result
        target = self._target(ref)
        rest = {key: item for key, item in result.items() if key != "$ref"}
        if not rest:
            return target
        if isinstance(target, dict) and not any(key in _CHECKING_KEYWORDS for key in rest):
            return {**target, **rest}  # only annotations beside the `$ref` (a description, a default)
        return {"allOf": [target, rest]}

    def _target(self, ref: str) -> Any:
        self.inlined += 1
        if ref in self._done:
            target, nodes = self._done[ref]
            self._count(nodes)  # one more copy of it in the JSON the agent and the template get
            return target
        if ref in self._expanding:
            raise self._recursive(ref)
        self._expanding.append(ref)
        before = self.nodes
        target = self.schema(self._resolve(ref))
        self._expanding.pop()
        self._done[ref] = (target, self.nodes - before)
        return target

    def _count(self, nodes: int) -> None:
        self.nodes += nodes
        if self.nodes > MAX_INLINED_NODES:
            raise invalid_value(
                self.param,
                f"Invalid schema for function parameters: tool {self.tool_name!r} grows beyond "
                f"{MAX_INLINED_NODES} objects and arrays once the '$ref's into its '$defs' are inlined.",
            )

    @staticmethod
    def _into_dropped(ref: str) -> bool:
        """Whether `ref` is a JSON pointer into a top-level key that the native schema drops."""
        if not ref.startswith("#/"):
            return False
        return _unescape(ref[2:].split("/")[0]) not in KEPT_KEYS

    def _resolve(self, ref: str) -> Any:
        value: Any = self.root
        for segment in ref[2:].split("/"):
            name = _unescape(segment)
            if isinstance(value, dict) and name in value:
                value = value[name]
            elif isinstance(value, list) and name.isdigit() and int(name) < len(value):
                value = value[int(name)]
            else:
                raise invalid_value(
                    self.param,
                    f"Invalid schema for function parameters: tool {self.tool_name!r} refers to {ref!r}, "
                    "which its schema does not define.",
                )
        return value

    def _recursive(self, ref: str) -> Exception:
        return invalid_value(
            self.param,
            f"Invalid schema for function parameters: tool {self.tool_name!r} refers to {ref!r} from inside "
            "itself. This server drops '$defs' and 'definitions' from the top level, as Paddler does, and "
            "inlines the definitions they hold; a recursive definition cannot be inlined.",
        )


def _unescape(segment: str) -> str:
    return segment.replace("~1", "/").replace("~0", "~")
