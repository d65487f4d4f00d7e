"""One request's way to the llama-server of a `llama_server` agent, for the two fronts that pass
requests through: the reverse proxy (`reverse_proxy.py`) and the OpenAI service
(`openai_routes.py`, when a request's model is a llama-server's).

`LlamaServerPassage.open` picks the agent and sends the request; it yields llama-server's answer
as an httpx streaming response, whose body the front passes on. How the agent is picked: a
request that runs the model (`UpstreamRequest.uses_slot`) claims a slot, by the pool's routing
policy among the agents the request wants (`agent_wants.py`), and waits in the balancer's buffer
when none is free; the claim counts at once and is released when the block ends, however it
ends, and the agent's reports never erase it (`AgentController.slots_busy`). Any other request
goes to any healthy agent it wants, free slot or not.

A llama-server that refuses the connection, does not accept it within `CONNECT_TIMEOUT`, or
closes it before its answer's first byte, is taken out of rotation until its agent's next status
update (that report may have been polled before the failure: the request itself never goes back to
it), and the request is sent once more, to another agent (the body is held whole, so that it
can be sent again). What cannot be sent raises `PassageRefused` with the HTTP status and message
the front answers with.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import httpx

from paddler_trio.proxy.agent_controller import AgentController
from paddler_trio.proxy.agent_pool import AgentPool, SlotClaim
from paddler_trio.proxy.agent_wants import AgentWants
from paddler_trio.proxy.buffer import BufferOverflow, BufferTimeout, RequestBuffer
from paddler_trio.proxy.prefix_chain import NO_PREFIX, PrefixChain

_logger = logging.getLogger(__name__)

# A llama-server that has not accepted the connection by then is taken as down. Nothing bounds
# the answer: a long prompt may take minutes before its first token on a CPU.
CONNECT_TIMEOUT = 3.0
# Headers httpx adds to a request that did not have them; a proxy adds none.
_HTTPX_DEFAULT_HEADERS = ("accept", "accept-encoding", "user-agent")


class PassageRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _NoAnswer(Exception):
    """The llama-server sent no byte back: refused, unreachable, or closed before answering."""


@attrs.frozen(kw_only=True)
class UpstreamRequest:
    method: str
    # Path and query, as the client sent them.
    target: str
    # Lowercase names; no hop-by-hop headers.
    headers: tuple[tuple[str, str], ...]
    body: bytes
    uses_slot: bool
    prefix: PrefixChain = NO_PREFIX


def upstream_client() -> httpx.AsyncClient:
    """The balancer's connections to llama-servers: a new one for each request. llama-server
    closes its side after every streamed answer without saying so (no `Connection: close`), so a
    request sent on a kept-alive connection the moment a stream ends, as a buffered request is,
    finds it closing and fails. A connection costs well under a millisecond on a local network."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
        follow_redirects=False,
        trust_env=False,
    )


class LlamaServerPassage:
    def __init__(self, *, pool: AgentPool, buffer: RequestBuffer, client: httpx.AsyncClient, rewrite_host_header: bool = False) -> None:
        self._pool = pool
        self._buffer = buffer
        self._client = client
        self._rewrite_host_header = rewrite_host_header

    @property
    def routes_by_prefix(self) -> bool:
        return self._buffer.routes_by_prefix

    @asynccontextmanager
    async def open(self, request: UpstreamRequest, wants: AgentWants) -> AsyncIterator[httpx.Response]:
        for attempt in (1, 2):
            claim, agent = await self._choose(request, wants)
            try:
                try:
                    response = await self._send(request, agent)
                except _NoAnswer as failure:
                    self._take_out_of_rotation(agent, str(failure))
                    if claim is not None:
                        claim.forget_prefix()
                    wants = wants.without(agent.id)  # even if its agent reports it healthy meanwhile
                    if attempt == 1:
                        _logger.info("sending %s %s to another llama-server agent", request.method, request.target)
                    continue
                try:
                    yield response
                finally:
                    await response.aclose()
                return
            finally:
                # However the attempt ends: answered, refused, failed, or cancelled (the client left).
                if claim is not None:
                    claim.release()
        raise PassageRefused(502, "no llama-server agent answered the request")

    async def _choose(self, request: UpstreamRequest, wants: AgentWants) -> tuple[SlotClaim | None, AgentController]:
        """A slot claim for a request that runs the model, else just an agent."""
        if request.uses_slot:
            try:
                claim = await self._buffer.claim(request.prefix, wants)
            except BufferOverflow:
                raise PassageRefused(429, "too many requests are waiting for a free llama-server slot") from None
            except BufferTimeout:
                raise PassageRefused(504, "waiting for a free llama-server slot timed out") from None
            return claim, claim.agent
        chosen = self._pool.any_serving(wants)
        if chosen is None:
            raise PassageRefused(503, "no llama-server agent is available")
        return None, chosen

    async def _send(self, request: UpstreamRequest, agent: AgentController) -> httpx.Response:
        assert agent.status.llama_server is not None  # a llama_server agent reports its address
        address = agent.status.llama_server.external_llamacpp_addr
        headers = list(request.headers)
        if self._rewrite_host_header:
            headers = [(name, value) for name, value in headers if name != "host"] + [("host", address)]
        upstream_request = self._client.build_request(
            request.method,
            httpx.URL(f"http://{address}").copy_with(raw_path=request.target.encode()),
            headers=headers,
            content=request.body,
        )
        given = {name for name, _ in request.headers}
        for name in _HTTPX_DEFAULT_HEADERS:
            if name not in given:
                del upstream_request.headers[name]
        try:
            return await self._client.send(upstream_request, stream=True)
        except httpx.TransportError as error:
            raise _NoAnswer(f"{type(error).__name__}: {error}") from error

    def _take_out_of_rotation(self, agent: AgentController, why: str) -> None:
        _logger.warning(
            "llama-server of agent %s sent nothing back (%s): no more requests go there until the agent reports again",
            agent.id,
            why,
        )
        agent.take_out_of_rotation()
        self._pool.notify_changed()
