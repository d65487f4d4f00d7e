"""Chat templates, grammars and tool calls on the real Qwen2.5-Coder model."""

from __future__ import annotations

import json

import attrs
import jsonschema

from paddler_trio.engine.engine import Engine, EngineSettings
from paddler_trio.engine.engine_errors import ChatTemplateDoesNotCompile
from paddler_trio.protocol import (
    CalledFunction,
    ChatTemplateError,
    ContinueFromConversationHistoryParams,
    ContinueFromRawPromptParams,
    ConversationMessage,
    FunctionDefinition,
    FunctionTool,
    GbnfGrammar,
    GenerationDone,
    GrammarIncompatibleWithThinking,
    GrammarInitializationFailed,
    GrammarSyntaxError,
    InferenceParameters,
    JsonSchemaGrammar,
    MessageToolCall,
    ParametersSchema,
    ToolCallParsed,
    ValidJsonArguments,
)
from tests.engine.engine_harness import chat, raw

GREEDY = attrs.evolve(InferenceParameters.deterministic(), context_size=4096, n_batch=512)


def conversation(text: str, **overrides) -> ContinueFromConversationHistoryParams:
    fields = dict(
        add_generation_prompt=True,
        conversation_history=(ConversationMessage(role="user", content=text),),
        enable_thinking=False,
        max_tokens=64,
    )
    fields.update(overrides)
    return ContinueFromConversationHistoryParams(**fields)


WEATHER_TOOL = FunctionTool(
    function=FunctionDefinition(
        name="get_weather",
        description="Get the current weather in a city",
        parameters=ParametersSchema(
            type="object",
            properties={"city": {"type": "string", "description": "The city name"}},
            required=("city",),
        ),
    )
)


async def test_qwen_template_renders_chatml_with_generation_prompt(qwen_model_path):
    async with Engine.open(EngineSettings(str(qwen_model_path), slots=1, inference_parameters=GREEDY)) as engine:
        prompt = engine.render_conversation(conversation("Hello there"))
        assert "<|im_start|>user\nHello there<|im_end|>\n" in prompt
        assert prompt.endswith("<|im_start|>assistant\n")
        with_tools = engine.render_conversation(conversation("Weather?", tools=(WEATHER_TOOL,)))
        assert "get_weather" in with_tools and "<tools>" in with_tools


async def test_assistant_tool_calls_and_tool_answers_reach_the_template(qwen_model_path):
    history = (
        ConversationMessage(role="user", content="Weather in Paris?"),
        ConversationMessage(
            role="assistant",
            content="",
            tool_calls=(MessageToolCall(id="call_1", function=CalledFunction("get_weather", '{"city": "Paris"}')),),
        ),
        ConversationMessage(role="tool", content='{"celsius": 21}', tool_call_id="call_1", name="get_weather"),
    )
    async with Engine.open(EngineSettings(str(qwen_model_path), slots=1, inference_parameters=GREEDY)) as engine:
        prompt = engine.render_conversation(
            conversation("", conversation_history=history, tools=(WEATHER_TOOL,))
        )
    # Arguments reach the template as an object: it writes them with `tojson`, not as a quoted string.
    assert '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>' in prompt
    assert '<|im_start|>user\n<tool_response>\n{"celsius": 21}\n</tool_response><|im_end|>' in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


async def test_conversation_ends_at_end_of_generation(qwen_model_path):
    async with Engine.open(EngineSettings(str(qwen_model_path), slots=1, inference_parameters=GREEDY)) as engine:
        outcome = await chat(engine, conversation("Reply with just the word: yes", max_tokens=200))
        assert isinstance(outcome.terminal, GenerationDone)
        assert "yes" in outcome.content.lower()
        assert outcome.usage.content_tokens < 200  # stopped by <|im_end|>, not by the limit


async def test_json_schema_grammar_yields_valid_json(qwen_model_path):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    async with Engine.open(EngineSettings(str(qwen_model_path), slots=1, inference_parameters=GREEDY)) as engine:
        params = conversation(
            "Give me a JSON object describing a person named Ada aged 36.",
            grammar=JsonSchemaGrammar(schema=json.dumps(schema)),
            max_tokens=100,
        )
        outcome = await chat(engine, params)
        assert isinstance(outcome.terminal, GenerationDone), outcome.terminal
        document = json.loads(outcome.content)
        jsonschema.validate(document, schema)


async def test_gbnf_grammar_constrains_a_raw_prompt(qwen_model_path):
    async with Engine.open(EngineSettings(str(qwen_model_path), slots=1, inference_parameters=GREEDY)) as engine:
        grammar = GbnfGrammar(grammar='root ::= ("yes" | "no") "."', root="root")
        outcome = await raw(engine, ContinueFromRawPromptParams(raw_prompt="Is water wet?", max_tokens=10, grammar=grammar))
        assert outcome.content in ("yes.", "no.")


async def test_grammar_errors_have_paddlers_kinds(qwen_model_path):
    async with Engine.open(EngineSettings(str(qwen_model_path), slots=1, inference_parameters=GREEDY)) as engine:
        bad_gbnf = GbnfGrammar(grammar="root ::= (", root="root")
        outcome = await raw(engine, ContinueFromRawPromptParams(raw_prompt="x", max_tokens=4, grammar=bad_gbnf))
        assert isinstance(outcome.terminal, GrammarInitializationFailed)
        unknown_root = GbnfGrammar(grammar='root ::= "a"', root="start")
        outcome = await raw(engine, ContinueFromRawPromptParams(raw_prompt="x", max_tokens=4, grammar=unknown_root))
        assert isinstance(outcome.terminal, GrammarInitializationFailed)
        bad_schema = JsonSchemaGrammar(schema="{not json")
        outcome = await raw(engine, ContinueFromRawPromptParams(raw_prompt="x", max_tokens=4, grammar=bad_schema))
        assert isinstance(outcome.terminal, GrammarSyntaxError)
        assert outcome.terminal.message.startswith("Failed to convert JSON schema to grammar: ")  # Paddler's words
        thinking = conversation("hi", enable_thinking=True, grammar=GbnfGrammar(grammar='root ::= "a"', root="root"))
        outcome = await chat(engine, thinking)
        assert outcome.terminal == GrammarIncompatibleWithThinking("Grammar constraints are incompatible with thinking mode")
        assert engine.scheduler.slots_busy == 0


async def test_tool_call_is_parsed(qwen_model_path):
    async with Engine.open(EngineSettings(str(qwen_model_path), slots=1, inference_parameters=GREEDY)) as engine:
        params = conversation(
            "What is the weather like in Paris right now? Use the get_weather tool.",
            tools=(WEATHER_TOOL,),
            parse_tool_calls=True,
            max_tokens=120,
        )
        outcome = await chat(engine, params)
        parsed = [result for result in outcome.results if isinstance(result, ToolCallParsed)]
        assert parsed, f"no tool call parsed; the model wrote {outcome.content!r} / {outcome.tool_call_text!r}"
        call = parsed[0].calls[0]
        assert call.name == "get_weather"
        assert isinstance(call.arguments, ValidJsonArguments)
        assert "paris" in call.arguments.value["city"].lower()
        assert outcome.usage.tool_call_tokens > 0
        # This small Qwen writes the call without <tool_call> markers; it is still a tool call,
        # not content the user would see.
        assert "get_weather" in outcome.tool_call_text
        assert outcome.content.strip() == ""


async def test_broken_template_override_is_reported_and_requests_get_a_clear_error(qwen_model_path):
    settings = EngineSettings(
        str(qwen_model_path), slots=1, inference_parameters=GREEDY, chat_template_override="{% for x in %}"
    )
    async with Engine.open(settings) as engine:
        assert isinstance(engine.chat_template_problem, ChatTemplateDoesNotCompile)
        outcome = await chat(engine, conversation("Hello"))
        assert isinstance(outcome.terminal, ChatTemplateError)
        # Raw prompts do not need the template and still work.
        outcome = await raw(engine, ContinueFromRawPromptParams(raw_prompt="def add(a, b):", max_tokens=4))
        assert outcome.usage.content_tokens == 4


async def test_template_that_raises_gives_chat_template_error(qwen_model_path):
    override = "{{ raise_exception('only user messages please') }}"
    settings = EngineSettings(str(qwen_model_path), slots=1, inference_parameters=GREEDY, chat_template_override=override)
    async with Engine.open(settings) as engine:
        outcome = await chat(engine, conversation("Hello"))
        assert isinstance(outcome.terminal, ChatTemplateError)
        assert "only user messages please" in outcome.terminal.message


async def test_template_override_changes_the_prompt(qwen_model_path):
    override = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}[assistant]"
    settings = EngineSettings(str(qwen_model_path), slots=1, inference_parameters=GREEDY, chat_template_override=override)
    async with Engine.open(settings) as engine:
        assert engine.render_conversation(conversation("Hi")) == "[user] Hi\n[assistant]"


async def test_sandbox_blocks_python_internals(qwen_model_path):
    override = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    settings = EngineSettings(str(qwen_model_path), slots=1, inference_parameters=GREEDY, chat_template_override=override)
    async with Engine.open(settings) as engine:
        outcome = await chat(engine, conversation("Hello"))
        assert isinstance(outcome.terminal, ChatTemplateError)


async def test_gguf_metadata_is_a_string_map(qwen_model_path):
    async with Engine.open(EngineSettings(str(qwen_model_path), slots=1, inference_parameters=GREEDY)) as engine:
        assert engine.metadata["general.architecture"] == "qwen2"
        assert "<|im_start|>" in engine.metadata["tokenizer.chat_template"]
        assert all(isinstance(key, str) and isinstance(value, str) for key, value in engine.metadata.items())


async def test_reply_that_only_looks_like_json_stays_content(qwen_model_path):
    async with Engine.open(EngineSettings(str(qwen_model_path), slots=1, inference_parameters=GREEDY)) as engine:
        params = conversation(
            'Reply with exactly this JSON and nothing else: {"answer": 42}',
            tools=(WEATHER_TOOL,),
            parse_tool_calls=True,
            max_tokens=40,
        )
        outcome = await chat(engine, params)
        assert not [result for result in outcome.results if isinstance(result, ToolCallParsed)]
        assert "42" in outcome.content
