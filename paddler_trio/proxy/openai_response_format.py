"""Structured output: `response_format` (chat) and `text.format` (responses) as a grammar.

`json_object` becomes a GBNF grammar for any JSON object; `json_schema` becomes the native
`json_schema` grammar (the agent converts the schema with llama.cpp's converter, and a
schema it cannot convert comes back as a 400 naming this parameter); `text` means none.
A grammar cannot constrain a reply that starts with thinking, so the routes turn
thinking off when one is asked for.
"""

from __future__ import annotations

import json

from paddler_trio.proxy.openai_errors import invalid_value
from paddler_trio.proxy.openai_request_fields import RequestObject
from paddler_trio.protocol import GbnfGrammar, GrammarConstraint, JsonSchemaGrammar

# Any JSON object (after llama.cpp's grammars/json.gbnf), with bounded whitespace so that a
# small model cannot spend its whole token budget on blanks.
JSON_OBJECT_GBNF = r"""
root    ::= object
value   ::= object | array | string | number | ("true" | "false" | "null") ws
object  ::= "{" ws ( string ":" ws value ( "," ws string ":" ws value )* )? "}" ws
array   ::= "[" ws ( value ( "," ws value )* )? "]" ws
string  ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{4} ) )* "\"" ws
number  ::= "-"? ( "0" | [1-9] [0-9]{0,15} ) ( "." [0-9]+ )? ( [eE] [-+]? [0-9]{1,4} )? ws
ws      ::= [ \t\n]{0,20}
""".strip()

JSON_OBJECT_GRAMMAR = GbnfGrammar(grammar=JSON_OBJECT_GBNF, root="root")

_TYPES = ("text", "json_object", "json_schema")


def chat_response_format_grammar(body: RequestObject) -> GrammarConstraint | None:
    """`response_format`: `{"type": "json_schema", "json_schema": {"name", "schema", "strict"?}}` or the others."""
    response_format = body.object("response_format")
    if response_format is None:
        return None
    kind = response_format.choice("type", _TYPES, required=True)
    if kind != "json_schema":
        return _grammar_for(kind)
    json_schema = response_format.object("json_schema", required=True)
    assert json_schema is not None
    json_schema.string("name", required=True)
    return _schema_grammar(json_schema)


def text_format_grammar(body: RequestObject) -> GrammarConstraint | None:
    """`text.format`: `{"type": "json_schema", "name", "schema", "strict"?}` (flat) or the others."""
    text = body.object("text")
    text_format = text.object("format") if text is not None else None
    if text_format is None:
        return None
    kind = text_format.choice("type", _TYPES, required=True)
    if kind != "json_schema":
        return _grammar_for(kind)
    text_format.string("name", required=True)
    return _schema_grammar(text_format)


def _grammar_for(kind: str | None) -> GrammarConstraint | None:
    return JSON_OBJECT_GRAMMAR if kind == "json_object" else None


def _schema_grammar(holder: RequestObject) -> GrammarConstraint:
    schema = holder.object("schema")
    if schema is None:
        return JSON_OBJECT_GRAMMAR
    if not schema.data:
        raise invalid_value(schema.path, "The JSON schema must not be empty.")
    return JsonSchemaGrammar(schema=json.dumps(schema.data))
