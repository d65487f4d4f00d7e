"""The OpenAI routes' way onto the native dispatch path: the same `RequestForwarder` (buffer,
slot choice, item timeout, agent loss, drain on cancel) serving one request in a task of
the HTTP request's own nursery (`request_nursery.py`), its messages read here one by one.

A route reads the first message before it answers, so that a buffer overflow, a timeout or
an agent's refusal gets its own HTTP status even for a streaming request; the rest is read
by the response body. Closing the replies cancels the forwarding task: a request still in
the buffer leaves it at once, one at an agent is stopped and its slot drained (as on the
native routes). However the HTTP request ends (the response's last byte, the client gone,
shutdown), its nursery closes and cancels the forwarding task with it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from paddler_trio.proxy.forwarding import Emit, RequestForwarder, emit_all_into
from paddler_trio.proxy.inference_socket import TokenGenerationMode
from paddler_trio.proxy.openai_errors import OpenAIError, error_from_envelope
from paddler_trio.proxy.request_id import new_request_id
from paddler_trio.proxy.request_nursery import request_nursery
from paddler_trio.protocol import AgentRequest, ErrorEnvelope, InferenceClientBoundMessage, ResponseEnvelope

_logger = logging.getLogger(__name__)

# Messages a request may run ahead of its client before the forwarder waits for the client.
STREAM_BUFFER = 64


class AgentReplies:
    """The response payloads of one dispatched request, in order; an error envelope raises `OpenAIError`."""

    def __init__(self, receive: trio.MemoryReceiveChannel[InferenceClientBoundMessage], scope: trio.CancelScope) -> None:
        self._receive = receive
        self._scope = scope

    def __aiter__(self) -> AgentReplies:
        return self

    async def first(self) -> Any:
        """The first payload, read before answering; the replies are closed if this fails in any way."""
        try:
            return await self.__anext__()
        except StopAsyncIteration:
            self.close()
            raise OpenAIError(502, "The agent ended the reply before sending anything.") from None
        except BaseException:
            self.close()
            raise

    async def __anext__(self) -> Any:
        try:
            message = await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None
        if isinstance(message, ErrorEnvelope):
            raise error_from_envelope(message.error)
        assert isinstance(message, ResponseEnvelope)
        return message.response

    def close(self) -> None:
        self._scope.cancel()
        self._receive.close()


class OpenAIDispatcher:
    def __init__(self, *, forwarder: RequestForwarder, cluster: TokenGenerationMode) -> None:
        self._forwarder = forwarder
        self._cluster = cluster

    def dispatch(self, request: AgentRequest, *, route_name: str) -> AgentReplies:
        """One token generation request through the buffer to an agent; in embeddings mode a 501
        naming the route as Paddler does ("Chat completions are disabled while ...")."""
        if not self._cluster.token_generation_enabled:
            raise OpenAIError(
                501,
                f"{route_name} are disabled while the cluster is configured for embeddings",
                code="token_generation_disabled",
            )
        request_id = new_request_id()
        return self._run(request_id, lambda emit: self._forwarder.serve(request_id, request, emit))

    def dispatch_all(self, requests: list[AgentRequest]) -> AgentReplies:
        """Several requests at once (embedding chunks), their replies merged in arrival order."""

        async def serve_all(emit: Emit) -> None:
            async with trio.open_nursery() as nursery:
                for request in requests:
                    nursery.start_soon(self._forwarder.serve, new_request_id(), request, emit)

        return self._run(new_request_id(), serve_all)

    def _run(self, request_id: str, work: Callable[[Emit], Awaitable[None]]) -> AgentReplies:
        send, receive = trio.open_memory_channel[InferenceClientBoundMessage](STREAM_BUFFER)
        scope = trio.CancelScope()
        request_nursery().start_soon(_relay, request_id, work, send, scope)
        return AgentReplies(receive, scope)


async def _relay(
    request_id: str,
    work: Callable[[Emit], Awaitable[None]],
    send: trio.MemorySendChannel[InferenceClientBoundMessage],
    scope: trio.CancelScope,
) -> None:
    with scope:
        await emit_all_into(send, request_id, functools.partial(work, send.send))
