"""`POST /v1/responses`: one turn through the native dispatch path, answered as a `response`
object or as its stream of named events, each with a `sequence_number` from 0 (spec 3.2).

The output is built once, as events, whether streamed or not (a non-streaming answer is the
object the last event carries): `response.created`, `response.in_progress`, then per output
item `output_item.added`, its content part, deltas (`output_text`, `reasoning_text`,
`function_call_arguments`), their `.done` events and `output_item.done`; items open and
close as the kind of token changes. The last event is `response.completed` (also when the
token limit ended the reply: Paddler's tests expect it, and its responses have no
`incomplete` status) or `response.failed` (an error after the stream started). There is no
`[DONE]` sentinel, as in OpenAI's and Paddler's Responses streams. `usage` is left out until
the reply is over, as Paddler leaves it out.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from quart import Response

from paddler_trio.proxy.openai_dispatch import AgentReplies, OpenAIDispatcher
from paddler_trio.proxy.openai_errors import OpenAIError
from paddler_trio.proxy.openai_reply import (
    ContentPiece,
    ReasoningPiece,
    ReplyAssembler,
    ReplyPiece,
    ToolCallsPiece,
    collect,
    first_pieces_of,
    rest_of,
)
from paddler_trio.proxy.openai_request_fields import RequestObject
from paddler_trio.proxy.openai_responses_request import ResponsesRequest, read_responses_request
from paddler_trio.proxy.openai_sse import sse_event, sse_response
from paddler_trio.proxy.openai_usage import response_usage
from paddler_trio.proxy.request_id import new_request_id


Event = dict[str, Any]


class _OpenItem:
    """The message or reasoning item that deltas currently go to."""

    def __init__(self, item: dict[str, Any], output_index: int, part_type: str, delta_event: str) -> None:
        self.item = item
        self.output_index = output_index
        self.part_type = part_type
        self.delta_event = delta_event
        self.text: list[str] = []


class ResponseBuilder:
    def __init__(self, request: ResponsesRequest) -> None:
        self.request = request
        self.id = "resp_" + new_request_id()
        self.created_at = int(time.time())
        self.reply = ReplyAssembler(
            max_tokens=request.params.max_tokens, grammar_param="text.format", messages_param="input"
        )
        self.output: list[dict[str, Any]] = []
        self._open: _OpenItem | None = None
        self._sequence = 0

    # --- the response object ---------------------------------------------------------

    def response(self, status: str, *, error: OpenAIError | None = None) -> dict[str, Any]:
        request = self.request
        usage = self.reply.usage
        response: dict[str, Any] = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": None if error is None else {"code": _error_code(error), "message": error.message},
            "incomplete_details": None,
            "instructions": request.instructions,
            "max_output_tokens": request.max_output_tokens,
            "model": request.model,
            "output": [dict(item) for item in self.output],
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": request.reasoning_effort, "summary": None},
            "temperature": request.temperature,
            "text": {"format": request.text_format},
            "tool_choice": request.tool_choice,
            "tools": request.tools,
            "top_p": request.top_p,
            "truncation": "disabled",
            "metadata": request.metadata,
        }
        if usage is not None and status != "in_progress":
            response["usage"] = response_usage(usage)
        return response

    # --- events ------------------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> Event:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event

    def start(self) -> list[Event]:
        return [
            self._event("response.created", response=self.response("in_progress")),
            self._event("response.in_progress", response=self.response("in_progress")),
        ]

    def add(self, piece: ReplyPiece) -> list[Event]:
        if isinstance(piece, ToolCallsPiece):
            events = self._close()
            for call in piece.calls:
                events.extend(self._function_call(call.id, call.name, call.arguments))
            return events
        if isinstance(piece, ContentPiece):
            events = [] if self._open_is("output_text") else [*self._close(), *self._open_message()]
        else:
            assert isinstance(piece, ReasoningPiece)
            events = [] if self._open_is("reasoning_text") else [*self._close(), *self._open_reasoning()]
        assert self._open is not None
        self._open.text.append(piece.text)
        events.append(self._delta(self._open, piece.text))
        return events

    def finish(self) -> list[Event]:
        events = self._close()
        if not self.output:
            events.extend([*self._open_message(), *self._close()])
        events.append(self._event("response.completed", response=self.response("completed")))
        return events

    def fail(self, error: OpenAIError) -> list[Event]:
        events = self._close("incomplete")
        events.append(self._event("response.failed", response=self.response("failed", error=error)))
        return events

    def _open_is(self, part_type: str) -> bool:
        return self._open is not None and self._open.part_type == part_type

    def _open_message(self) -> list[Event]:
        item = {
            "id": "msg_" + new_request_id(),
            "type": "message",
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        }
        return self._open_item(item, "output_text", "response.output_text.delta")

    def _open_reasoning(self) -> list[Event]:
        item = {
            "id": "rs_" + new_request_id(),
            "type": "reasoning",
            "summary": [],
            "content": [],
            "status": "in_progress",
        }
        return self._open_item(item, "reasoning_text", "response.reasoning_text.delta")

    def _open_item(self, item: dict[str, Any], part_type: str, delta_event: str) -> list[Event]:
        self._open = _OpenItem(item, len(self.output), part_type, delta_event)
        self.output.append(item)
        events = [self._event("response.output_item.added", output_index=self._open.output_index, item=dict(item))]
        if part_type == "output_text":  # a reasoning item has no part events, as in Paddler
            events.append(
                self._event(
                    "response.content_part.added",
                    item_id=item["id"],
                    output_index=self._open.output_index,
                    content_index=0,
                    part=_part(part_type, ""),
                )
            )
        return events

    def _delta(self, open_item: _OpenItem, text: str) -> Event:
        fields: dict[str, Any] = {
            "item_id": open_item.item["id"],
            "output_index": open_item.output_index,
            "content_index": 0,
            "delta": text,
        }
        if open_item.part_type == "output_text":
            fields["logprobs"] = []
        return self._event(open_item.delta_event, **fields)

    def _close(self, status: str = "completed") -> list[Event]:
        open_item, self._open = self._open, None
        if open_item is None:
            return []
        item, index, text = open_item.item, open_item.output_index, "".join(open_item.text)
        part = _part(open_item.part_type, text)
        item["content"] = [part]
        item["status"] = status
        text_done: dict[str, Any] = {"item_id": item["id"], "output_index": index, "content_index": 0, "text": text}
        if open_item.part_type != "output_text":
            return [
                self._event("response.reasoning_text.done", **text_done),
                self._event("response.output_item.done", output_index=index, item=dict(item)),
            ]
        return [
            self._event("response.output_text.done", **text_done, logprobs=[]),
            self._event(
                "response.content_part.done", item_id=item["id"], output_index=index, content_index=0, part=part
            ),
            self._event("response.output_item.done", output_index=index, item=dict(item)),
        ]

    def _function_call(self, call_id: str, name: str, arguments: str) -> list[Event]:
        index = len(self.output)
        item = {
            "id": "fc_" + new_request_id(),
            "type": "function_call",
            "call_id": call_id,
            "name": name,
            "arguments": "",
            "status": "in_progress",
        }
        added = self._event("response.output_item.added", output_index=index, item=dict(item))
        item.update(arguments=arguments, status="completed")
        self.output.append(item)
        return [
            added,
            self._event(
                "response.function_call_arguments.delta", item_id=item["id"], output_index=index, delta=arguments
            ),
            self._event(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=index,
                arguments=arguments,
            ),
            self._event("response.output_item.done", output_index=index, item=dict(item)),
        ]


def _part(part_type: str, text: str) -> dict[str, Any]:
    if part_type == "output_text":
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {"type": "reasoning_text", "text": text}


def _sse(event: Event) -> bytes:
    return sse_event(event["type"], event)


def _error_code(error: OpenAIError) -> str:
    """The response object's `error.code`, from OpenAI's fixed list."""
    return "invalid_prompt" if error.status == 400 else "server_error"


async def responses(dispatcher: OpenAIDispatcher, body: RequestObject) -> Response | dict[str, Any]:
    builder = ResponseBuilder(read_responses_request(body))
    replies = dispatcher.dispatch(builder.request.params, route_name="Responses")
    if not builder.request.stream:
        await collect(replies, builder.reply)
        builder.start()
        _build_output(builder)
        return builder.finish()[-1]["response"]
    first_pieces = await first_pieces_of(replies, builder.reply)
    return sse_response(_stream(builder, replies, first_pieces))


def _build_output(builder: ResponseBuilder) -> None:
    """The output items of a reply read whole."""
    reply = builder.reply
    if reply.reasoning:
        builder.add(ReasoningPiece(reply.reasoning))
    if reply.content:
        builder.add(ContentPiece(reply.content))
    if reply.tool_calls:
        builder.add(ToolCallsPiece(tuple(reply.tool_calls), first_index=0))


async def _stream(
    builder: ResponseBuilder, replies: AgentReplies, first_pieces: list[ReplyPiece]
) -> AsyncIterator[bytes]:
    try:
        for event in builder.start():
            yield _sse(event)
        for piece in first_pieces:
            for event in builder.add(piece):
                yield _sse(event)
        try:
            async for piece in rest_of(replies, builder.reply):
                for event in builder.add(piece):
                    yield _sse(event)
        except OpenAIError as error:
            for event in builder.fail(error):
                yield _sse(event)
            return
        for event in builder.finish():
            yield _sse(event)
    finally:
        replies.close()
