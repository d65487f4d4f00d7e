"""Coding agents' tool lists (OpenCode's shape) through the OpenAI-compatible service, with the
`openai` package as the client, against the real balancer (in-process) and a scripted fake
agent: non-function tools and unknown top-level schema keys are dropped, as Paddler 4.1 drops
them; a `tool_choice` that names a dropped tool is a 400 naming it."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from typing import Any

import openai
import pytest
import trio

from paddler_trio.protocol import ContinueFromConversationHistoryParams, unstructure
from tests.proxy.balancer_harness import BalancerUnderTest
from tests.proxy.scripted_fake_agent import ScriptedFakeAgent
from tests.proxy.test_openai_service import openai_balancer

DRAFT_7 = "http://json-schema.org/draft-07/schema#"

# OpenCode's built-in tools as it sends them (AI SDK from zod: `$schema` and `additionalProperties: false`).
BASH = {
    "name": "bash",
    "description": "Executes a given bash command in a persistent shell session.",
    "parameters": {
        "type": "object",
        "properties": {
            "command": {"type": "string", "description": "The command to execute"},
            "timeout": {"type": "number", "description": "Optional timeout in milliseconds"},
            "description": {"type": "string", "description": "Clear, concise description of what this command does"},
        },
        "required": ["command", "description"],
        "additionalProperties": False,
        "$schema": DRAFT_7,
    },
}
READ = {
    "name": "read",
    "description": "Reads a file from the local filesystem.",
    "parameters": {
        "type": "object",
        "properties": {
            "filePath": {"type": "string", "description": "The path to the file to read"},
            "offset": {"type": "number", "description": "The line number to start reading from (0-based)"},
            "limit": {"type": "number", "description": "The number of lines to read (defaults to 2000)"},
        },
        "required": ["filePath"],
        "additionalProperties": False,
        "$schema": DRAFT_7,
    },
}
WEBFETCH = {
    "name": "webfetch",
    "description": "Fetches content from a specified URL.",
    "parameters": {
        "type": "object",
        "properties": {
            "url": {"type": "string", "description": "The URL to fetch content from"},
            "format": {"type": "string", "enum": ["text", "markdown", "html"], "default": "markdown"},
        },
        "required": ["url", "format"],
        "additionalProperties": False,
        "$schema": DRAFT_7,
    },
}
# An MCP server's tool written with pydantic: `title` and `$defs` at the top level.
MCP_FORECAST = {
    "name": "weather_forecast",
    "description": "Forecast for a place.",
    "parameters": {
        "$defs": {"Unit": {"enum": ["celsius", "fahrenheit"], "title": "Unit", "type": "string"}},
        "properties": {"city": {"title": "City", "type": "string"}, "unit": {"$ref": "#/$defs/Unit"}},
        "required": ["city"],
        "title": "forecastArguments",
        "type": "object",
    },
}
FUNCTIONS = (BASH, READ, WEBFETCH, MCP_FORECAST)
KEPT = ("type", "properties", "required", "additionalProperties")
UNIT = {"enum": ["celsius", "fahrenheit"], "title": "Unit", "type": "string"}


def expected_native_tools() -> list[dict[str, Any]]:
    """What the agent must receive: the function tools only, with the four native top-level keys."""
    tools = []
    for function in FUNCTIONS:
        parameters = {key: value for key, value in function["parameters"].items() if key in KEPT}
        if function is MCP_FORECAST:
            parameters = copy.deepcopy(parameters)
            parameters["properties"]["unit"] = UNIT
        tools.append(
            {
                "type": "function",
                "function": {"name": function["name"], "description": function["description"], "parameters": parameters},
            }
        )
    return tools


def chat_tools() -> list[dict[str, Any]]:
    """OpenCode's chat completions tool list, plus a custom (freeform) tool and a hosted one."""
    return [
        *({"type": "function", "function": copy.deepcopy(function)} for function in FUNCTIONS),
        {"type": "custom", "custom": {"name": "apply_patch", "description": "Apply a patch", "format": {"type": "text"}}},
        {"type": "web_search"},
    ]


def responses_tools() -> list[dict[str, Any]]:
    """The same tools as the Responses API spells them (flat), plus hosted and custom ones."""
    return [
        *({"type": "function", "strict": False, **copy.deepcopy(function)} for function in FUNCTIONS),
        {"type": "web_search"},
        {"type": "custom", "name": "apply_patch", "description": "Apply a patch"},
    ]


def client(balancer: BalancerUnderTest) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://{balancer.addresses.compat_openai}/v1", api_key="unused", max_retries=0)


async def in_thread(call: Callable[[], Any]) -> Any:
    """The `openai` package's blocking client, off the Trio loop that serves the balancer."""
    return await trio.to_thread.run_sync(call)


def conversations(agent: ScriptedFakeAgent) -> list[ContinueFromConversationHistoryParams]:
    """The generation requests the agent received."""
    return [
        envelope.request for envelope in agent.requests if isinstance(envelope.request, ContinueFromConversationHistoryParams)
    ]


def native_tools(request: ContinueFromConversationHistoryParams) -> list[dict[str, Any]]:
    return json.loads(json.dumps(unstructure(request.tools)))


def tool_logs(caplog: pytest.LogCaptureFixture, module: str = "openai_tools") -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == f"paddler_trio.proxy.{module}"]


async def test_opencode_chat_request_offers_the_agent_its_function_tools_with_native_schemas(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="paddler_trio.proxy")
    async with openai_balancer() as balancer:
        agent = await balancer.add_agent()
        completion = await in_thread(
            lambda: client(balancer).chat.completions.create(
                model="m",
                messages=[{"role": "user", "content": "Read README.md"}],
                tools=chat_tools(),
                tool_choice="auto",
            )
        )
        assert completion.choices[0].message.content == "Hello, world"
        [native] = conversations(agent)
        assert native.parse_tool_calls is True
        assert native_tools(native) == expected_native_tools()
        logs = [record.getMessage() for record in tool_logs(caplog)]
        assert any("tools[4]" in line and "'custom' tool 'apply_patch'" in line for line in logs), logs
        assert any("tools[5]" in line and "'web_search' tool" in line for line in logs), logs
        schema_logs = [record.getMessage() for record in tool_logs(caplog, "openai_tool_parameters")]
        assert any("'bash'" in line and "$schema" in line for line in schema_logs), schema_logs
        assert any("'weather_forecast'" in line and "$defs, title" in line for line in schema_logs), schema_logs
        assert {record.levelno for record in tool_logs(caplog) + tool_logs(caplog, "openai_tool_parameters")} == {logging.DEBUG}


async def test_opencode_responses_request_offers_the_agent_its_function_tools_with_native_schemas(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="paddler_trio.proxy.openai_tools")
    async with openai_balancer() as balancer:
        agent = await balancer.add_agent()
        response = await in_thread(
            lambda: client(balancer).responses.create(model="m", input="Read README.md", tools=responses_tools())
        )
        assert response.status == "completed"
        assert response.output_text == "Hello, world"
        [native] = conversations(agent)
        assert native.parse_tool_calls is True
        assert native_tools(native) == expected_native_tools()
        logs = [record.getMessage() for record in tool_logs(caplog)]
        assert any("tools[4]" in line and "'web_search' tool" in line for line in logs), logs
        assert any("tools[5]" in line and "'custom' tool 'apply_patch'" in line for line in logs), logs


async def test_only_non_function_tools_is_a_request_without_tools() -> None:
    async with openai_balancer() as balancer:
        agent = await balancer.add_agent()
        completion = await in_thread(
            lambda: client(balancer).chat.completions.create(
                model="m", messages=[{"role": "user", "content": "Hi"}], tools=chat_tools()[-2:], tool_choice="none"
            )
        )
        assert completion.choices[0].message.content == "Hello, world"
        response = await in_thread(lambda: client(balancer).responses.create(model="m", input="Hi", tools=responses_tools()[-2:]))
        assert response.output_text == "Hello, world"
        requests = conversations(agent)
        assert len(requests) == 2
        for request in requests:
            assert (request.tools, request.parse_tool_calls) == ((), False)


@pytest.mark.parametrize(
    ("route", "tool_choice", "param", "named"),
    [
        ("chat", {"type": "custom", "custom": {"name": "apply_patch"}}, "tool_choice", "the 'custom' tool 'apply_patch'"),
        ("chat", {"type": "function", "function": {"name": "apply_patch"}}, "tool_choice.function.name", "'apply_patch'"),
        ("chat", {"type": "web_search"}, "tool_choice", "the 'web_search' tool"),
        ("responses", {"type": "web_search"}, "tool_choice", "the 'web_search' tool"),
        ("responses", {"type": "custom", "name": "apply_patch"}, "tool_choice", "the 'custom' tool 'apply_patch'"),
        ("responses", {"type": "function", "name": "apply_patch"}, "tool_choice.name", "'apply_patch'"),
    ],
)
async def test_tool_choice_naming_a_dropped_tool_is_a_400_naming_it(
    route: str, tool_choice: dict[str, Any], param: str, named: str
) -> None:
    async with openai_balancer() as balancer:
        agent = await balancer.add_agent()
        if route == "chat":

            def call() -> Any:
                return client(balancer).chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "Hi"}], tools=chat_tools(), tool_choice=tool_choice
                )

        else:

            def call() -> Any:
                return client(balancer).responses.create(model="m", input="Hi", tools=responses_tools(), tool_choice=tool_choice)

        with pytest.raises(openai.BadRequestError) as refused:
            await in_thread(call)
        assert refused.value.param == param
        assert refused.value.code == "invalid_value"
        message = refused.value.body["message"]
        assert named in message and "which this server drops from 'tools'" in message, message
        assert conversations(agent) == []
        assert await balancer.buffered() == 0


async def test_required_with_no_function_tool_left_is_a_400_naming_the_dropped_tools() -> None:
    async with openai_balancer() as balancer:
        with pytest.raises(openai.BadRequestError) as refused:
            await in_thread(
                lambda: client(balancer).chat.completions.create(
                    model="m",
                    messages=[{"role": "user", "content": "Hi"}],
                    tools=chat_tools()[-2:],
                    tool_choice="required",
                )
            )
        assert refused.value.param == "tool_choice"
        assert refused.value.body["message"] == (
            "tool_choice is 'required', but 'tools' holds no function tool to call: this server drops tools of "
            "other types (the 'custom' tool 'apply_patch', the 'web_search' tool)."
        )
