"""An OpenAI request for a llama-server's model, passed to that llama-server as it came
(`openai_model_routing.py` says which requests): same path and body, its answer (JSON or SSE)
streamed back to the client as llama-server sends it.

The passage (`llama_server_passage.py`: slot claim, buffer, retry on another agent) runs in a
task of the HTTP request's own nursery (`request_nursery.py`), which hands the answer's head,
then its body's chunks, to the response through a small channel. A refusal (buffer full,
timeout, no agent) becomes the OpenAI error it names. However the HTTP request ends (the last
byte, the client gone, shutdown), its nursery closes and cancels the task, which closes the
connection to llama-server, so llama-server stops generating and the slot is released.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import attrs
import httpx
import trio
from quart import Response

from paddler_trio.proxy.agent_wants import AgentWants
from paddler_trio.proxy.llama_server_passage import LlamaServerPassage, PassageRefused, UpstreamRequest
from paddler_trio.proxy.openai_errors import OpenAIError
from paddler_trio.proxy.request_nursery import request_nursery

_logger = logging.getLogger(__name__)

# Chunks of the answer that may wait for the client.
STREAM_BUFFER = 64
# llama-server's answer headers a client gets: the framing is the balancer's own.
PASSED_BACK_HEADERS = frozenset({"content-type", "cache-control", "content-encoding"})


@attrs.frozen
class _Head:
    status: int
    headers: tuple[tuple[str, str], ...]


async def pass_through(passage: LlamaServerPassage, request: UpstreamRequest, wants: AgentWants) -> Response:
    send, receive = trio.open_memory_channel[_Head | PassageRefused | bytes](STREAM_BUFFER)
    request_nursery().start_soon(_relay, passage, request, wants, send)
    first = await receive.receive()
    if isinstance(first, PassageRefused):
        receive.close()
        raise OpenAIError(first.status, first.message)
    assert isinstance(first, _Head)

    async def body() -> AsyncIterator[bytes]:
        async with receive:
            async for chunk in receive:
                assert isinstance(chunk, bytes)
                yield chunk

    response = Response(body(), status=first.status, headers=list(first.headers))
    response.timeout = None
    return response


async def _relay(
    passage: LlamaServerPassage,
    request: UpstreamRequest,
    wants: AgentWants,
    send: trio.MemorySendChannel[_Head | PassageRefused | bytes],
) -> None:
    async with send:
        try:
            async with passage.open(request, wants) as response:
                headers = tuple((name, value) for name, value in response.headers.items() if name.lower() in PASSED_BACK_HEADERS)
                await send.send(_Head(response.status_code, headers))
                async for chunk in response.aiter_raw():
                    await send.send(chunk)
        except PassageRefused as refusal:
            await send.send(refusal)
        except httpx.TransportError as error:
            _logger.warning("a llama-server broke off its answer to %s: %s", request.target, error)
        except trio.BrokenResourceError:
            pass  # the client is gone
