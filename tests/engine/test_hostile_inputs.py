"""Property tests: arbitrary chat templates and grammars (GBNF text, JSON schemas) never crash
the engine; they end in ChatTemplateDoesNotCompile / a render error, or GrammarSyntaxError /
GrammarInitializationFailed, the errors the agent reports to the client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from paddler_trio.engine.chat_template import ChatTemplate, ChatTemplateRenderError
from paddler_trio.engine.engine_errors import ChatTemplateDoesNotCompile
from paddler_trio.engine.model import LoadedModel
from paddler_trio.engine.request_rejection import RequestRejected
from paddler_trio.engine.sampling import (
    SamplerChain,
    SamplingSettings,
    gbnf_for_constraint,
)
from paddler_trio.protocol import (
    GbnfGrammar,
    GrammarInitializationFailed,
    GrammarSyntaxError,
    JsonSchemaGrammar,
)

EXAMPLES = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Pieces that reach the parser's and the renderer's interesting states more often than random text.
TEMPLATE_PIECES = st.sampled_from(
    [
        "{{", "}}", "{%", "%}", "{#", "#}", " for m in messages ", " endfor ", " if ", " else ", " endif ",
        " m.content ", " m['role'] ", "messages[0]", " | tojson ", " | length ", " 1/0 ", " 1//0 ", " ~ ",
        " range(10) ", " raise_exception('no') ", " macro f() ", " endmacro ", " f() ", " set x = ", " x ",
        " tools ", " bos_token ", " add_generation_prompt ", " messages.pop() ", " ''.__class__ ", " none ",
        " strftime_now('%Y') ", " 'a' * 3 ", " namespace(a=1) ", " loop.index ", " recursive ", "\n", "-",
    ]
)  # fmt: skip
TEMPLATES = st.one_of(st.text(max_size=200), st.lists(st.one_of(TEMPLATE_PIECES, st.text(max_size=5)), max_size=25).map("".join))
MESSAGES = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": [{"type": "text", "text": "Hi"}]}]

GBNF_PIECES = st.sampled_from(
    [
        "root", " ::= ", "\"a\"", "[a-z]", "[^\\n]", "*", "+", "?", "|", "(", ")", "{2,3}", "{1,}", "\n",
        "x", " x ::= x ", "\\", "\"", ".", "#", "[", "]", "{", "}", "::=", "\\x00", "\\u00e9",
    ]
)  # fmt: skip
GBNF = st.one_of(st.text(max_size=120), st.lists(GBNF_PIECES, max_size=30).map("".join))
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(
        st.sampled_from(["type", "properties", "items", "required", "enum", "$ref", "anyOf", "minItems", "pattern", "x"]),
        children,
        max_size=4,
    ),
    max_leaves=15,
)
SCHEMAS = st.one_of(st.text(max_size=60), JSON_VALUES.map(json.dumps))


@given(source=TEMPLATES)
@example(source="{{ 1/0 }}")
@example(source="{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}")
@example(source="{{ messages.pop() }}")
@example(source="{{ ''.__class__.__mro__ }}")
@EXAMPLES
def test_any_chat_template_compiles_or_fails_cleanly(source: str) -> None:
    try:
        template = ChatTemplate(source, bos_token="<bos>", eos_token="<eos>")
    except ChatTemplateDoesNotCompile:
        return
    try:
        rendered = template.render(list(MESSAGES), add_generation_prompt=True, enable_thinking=False, tools=[{"type": "function"}])
    except ChatTemplateRenderError:
        return
    assert isinstance(rendered, str)


@pytest.fixture(scope="module")
def gemma(gemma_model_path: Path) -> Iterator[LoadedModel]:
    model = LoadedModel.load(str(gemma_model_path))
    yield model
    model.close()


GREEDY = SamplingSettings(
    temperature=0.0, top_k=1, top_p=1.0, min_p=0.0, penalty_last_n=0, penalty_repeat=1.0, penalty_frequency=0.0, penalty_presence=0.0
)


def _chain_or_rejection(model: LoadedModel, constraint: GbnfGrammar | JsonSchemaGrammar) -> None:
    try:
        chain = SamplerChain(model, GREEDY, gbnf_for_constraint(constraint), context_tokens=64)
    except RequestRejected as rejection:
        assert isinstance(rejection.result, (GrammarSyntaxError, GrammarInitializationFailed)), rejection.result
        return
    chain.close()


@given(grammar=GBNF, root=st.sampled_from(["root", "x", "", "missing"]))
@EXAMPLES
def test_any_gbnf_grammar_builds_or_is_rejected(gemma: LoadedModel, grammar: str, root: str) -> None:
    _chain_or_rejection(gemma, GbnfGrammar(grammar=grammar, root=root))


@given(schema=SCHEMAS)
@EXAMPLES
def test_any_json_schema_builds_or_is_rejected(gemma: LoadedModel, schema: str) -> None:
    _chain_or_rejection(gemma, JsonSchemaGrammar(schema=schema))
