"""A grammar that constrains generation: ``{"type": "gbnf", ...}`` or ``{"type": "json_schema", ...}``."""

from __future__ import annotations

from typing import Union

import attrs


@attrs.frozen
class GbnfGrammar:
    """``{"type": "gbnf", "grammar": str, "root": str}``."""

    grammar: str
    root: str


@attrs.frozen
class JsonSchemaGrammar:
    """``{"type": "json_schema", "schema": "<JSON schema, JSON-encoded as a string>"}``."""

    schema: str


GrammarConstraint = Union[GbnfGrammar, JsonSchemaGrammar]
