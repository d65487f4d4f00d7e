"""Function tools of the OpenAI routes, as the native `Tool`s the chat template renders.

Chat completions nest the function (`{"type": "function", "function": {"name", ...}}`), the
Responses API does not (`{"type": "function", "name", ...}`). Coding agents (OpenCode and
the like) also send tools of other types (`web_search`, `custom`, `mcp` ...): those are
dropped, as Paddler 4.1 drops them, and logged at debug level; the model is offered the
function tools only. Their `parameters` schemas are cleaned in `openai_tool_parameters`.

`tool_choice` "none" offers no tools and a named function offers only that one; "auto" and
"required" offer them all (nothing forces the model to call one). "required" with no
function tool to call, and a choice that names a dropped tool, are a 400 naming it rather
than an answer that ignores what the client asked for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs

from paddler_trio.proxy.openai_errors import invalid_value
from paddler_trio.proxy.openai_request_fields import RequestObject, not_one_of
from paddler_trio.proxy.openai_tool_parameters import tool_parameters
from paddler_trio.protocol import FunctionDefinition, FunctionTool

_logger = logging.getLogger(__name__)

_TOOL_TYPES = ("function",)
_TOOL_CHOICES = ("none", "auto", "required")


@attrs.frozen
class DroppedTool:
    """A tool of a type other than "function", left out of the request."""

    kind: str
    name: str | None

    def described(self) -> str:
        return f"the {self.kind!r} tool {self.name!r}" if self.name else f"the {self.kind!r} tool"


def chat_tools(body: RequestObject) -> tuple[FunctionTool, ...]:
    tools: list[FunctionTool] = []
    dropped: list[DroppedTool] = []
    for item in body.objects("tools") or ():
        if _dropped(item, dropped):
            continue
        function = item.object("function", required=True)
        assert function is not None
        tools.append(_function_tool(function))
    return _chosen(tools, dropped, body, named=lambda choice: choice.object("function", required=True))


def responses_tools(body: RequestObject) -> tuple[FunctionTool, ...]:
    tools: list[FunctionTool] = []
    dropped: list[DroppedTool] = []
    for item in body.objects("tools") or ():
        if not _dropped(item, dropped):
            tools.append(_function_tool(item))
    return _chosen(tools, dropped, body, named=lambda choice: choice)


def _dropped(item: RequestObject, dropped: list[DroppedTool]) -> bool:
    """Whether `item` is a tool of another type than "function" (then added to `dropped`)."""
    kind = item.string("type", required=True)
    assert kind is not None
    if kind == "function":
        return False
    tool = DroppedTool(kind, _name_of(item, kind))
    dropped.append(tool)
    _logger.debug("dropped %s, %s: only function tools are offered to the model", item.path, tool.described())
    return True


def _name_of(item: RequestObject, kind: str) -> str | None:
    """A non-function tool's (or tool choice's) name: `name` (Responses) or `<type>.name` (chat)."""
    name = item.data.get("name")
    if not isinstance(name, str):
        nested = item.data.get(kind)
        name = nested.get("name") if isinstance(nested, dict) else None
    return name if isinstance(name, str) else None


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
            parameters=tool_parameters(parameters, name) if parameters is not None else None,
        )
    )


def _chosen(
    tools: list[FunctionTool],
    dropped: list[DroppedTool],
    body: RequestObject,
    *,
    named: Callable[[RequestObject], RequestObject | None],
) -> tuple[FunctionTool, ...]:
    """The tools offered under `tool_choice`."""
    choice = body.data.get("tool_choice")
    param = body.param("tool_choice")
    if choice is None or choice == "auto":
        return tuple(tools)
    if choice == "none":
        return ()
    if choice == "required":
        if not tools:
            raise invalid_value(param, _nothing_required(dropped))
        return tuple(tools)
    if isinstance(choice, str):
        raise not_one_of(param, choice, _TOOL_CHOICES)
    choice_object = body.object("tool_choice")
    assert choice_object is not None
    kind = choice_object.string("type", required=True)
    assert kind is not None
    if kind != "function":
        name = _name_of(choice_object, kind)
        for tool in dropped:
            if tool.kind == kind and (name is None or tool.name == name):
                raise invalid_value(param, _names_a_dropped_tool(tool))
        raise not_one_of(choice_object.param("type"), kind, _TOOL_TYPES)
    function = named(choice_object)
    assert function is not None
    name = function.string("name", required=True)
    offered = tuple(tool for tool in tools if tool.function.name == name)
    if offered:
        return offered
    for tool in dropped:
        if tool.name == name:
            raise invalid_value(function.param("name"), _names_a_dropped_tool(tool))
    raise invalid_value(function.param("name"), f"tool_choice names the function {name!r}, which is not in 'tools'.")


def _names_a_dropped_tool(tool: DroppedTool) -> str:
    return (
        f"tool_choice names {tool.described()}, which this server drops from 'tools': "
        "only function tools are offered to the model."
    )


def _nothing_required(dropped: list[DroppedTool]) -> str:
    if not dropped:
        return "tool_choice is 'required', but 'tools' holds no function tool to call."
    gone = ", ".join(tool.described() for tool in dropped)
    return (
        f"tool_choice is 'required', but 'tools' holds no function tool to call: this server drops tools of other types ({gone})."
    )
