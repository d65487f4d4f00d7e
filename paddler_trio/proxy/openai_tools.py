"""Function tools of the OpenAI routes, as the native `Tool`s the chat template renders.

Chat completions nest the function (`{"type": "function", "function": {"name", ...}}`), the
Responses API does not (`{"type": "function", "name", ...}`). Only function tools exist
here: any other type is a 400 naming it. `tool_choice` "none" offers no tools and a named
function offers only that one; "auto" and "required" offer them all (nothing forces the
model to call one).
"""

from __future__ import annotations

from typing import Any

from paddler_trio.proxy.openai_errors import invalid_value
from paddler_trio.proxy.openai_request_fields import RequestObject, invalid_type, not_one_of
from paddler_trio.protocol import FunctionDefinition, FunctionTool, ParametersSchema

_TOOL_TYPES = ("function",)
_TOOL_CHOICES = ("none", "auto", "required")


def chat_tools(body: RequestObject) -> tuple[FunctionTool, ...]:
    tools = []
    for item in body.objects("tools") or ():
        item.choice("type", _TOOL_TYPES, required=True)
        function = item.object("function", required=True)
        assert function is not None
        tools.append(_function_tool(function))
    return _chosen(tools, body, named=lambda choice: choice.object("function", required=True))


def responses_tools(body: RequestObject) -> tuple[FunctionTool, ...]:
    tools = []
    for item in body.objects("tools") or ():
        item.choice("type", _TOOL_TYPES, required=True)
        tools.append(_function_tool(item))
    return _chosen(tools, body, named=lambda choice: choice)


def _function_tool(function: RequestObject) -> FunctionTool:
    name = function.string("name", required=True)
    assert name is not None
    if not name:
        raise invalid_value(function.param("name"), "A function name must not be empty.")
    parameters = function.object("parameters")
    return FunctionTool(
        function=FunctionDefinition(
            name=name,
            description=function.string("description") or "",
            parameters=_parameters_schema(parameters) if parameters is not None else None,
        )
    )


def _parameters_schema(parameters: RequestObject) -> ParametersSchema:
    """The four top-level schema keys the native tool knows; other keywords are dropped, as Paddler does."""
    properties = parameters.object("properties")
    required = parameters.array("required")
    if required is not None:
        for index, name in enumerate(required):
            if not isinstance(name, str):
                raise invalid_type(f"{parameters.param('required')}[{index}]", "a string", name)
    schema = ParametersSchema(
        type=parameters.string("type") or "object",
        properties=properties.data if properties is not None else None,
        required=tuple(required) if required is not None else None,
        additionalProperties=parameters.data.get("additionalProperties"),
    )
    problems = schema.validate()
    if problems:
        raise invalid_value(parameters.path, "Invalid schema for function parameters: " + "; ".join(problems))
    return schema


def _chosen(tools: list[FunctionTool], body: RequestObject, *, named: Any) -> tuple[FunctionTool, ...]:
    """The tools offered under `tool_choice`."""
    choice = body.data.get("tool_choice")
    param = body.param("tool_choice")
    if choice is None or choice in ("auto", "required"):
        return tuple(tools)
    if choice == "none":
        return ()
    if isinstance(choice, str):
        raise not_one_of(param, choice, _TOOL_CHOICES)
    choice_object = body.object("tool_choice")
    assert choice_object is not None
    choice_object.choice("type", _TOOL_TYPES, required=True)
    function = named(choice_object)
    name = function.string("name", required=True)
    offered = tuple(tool for tool in tools if tool.function.name == name)
    if not offered:
        raise invalid_value(
            function.param("name"), f"tool_choice names the function {name!r}, which is not in 'tools'."
        )
    return offered
