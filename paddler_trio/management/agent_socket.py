"""The agents' WebSocket, `/api/v1/agent_socket/{agent_id}` on the management service (spec 5).

The balancer sends `Version` first and expects `RegisterAgent`; the agent then joins the
pool (a duplicate id is refused and the socket closed with 1008) and receives the current
applicable state. From then on a writer task drains the agent's outbox (requests,
`StopRespondingTo`, `SetState`) while the reader applies status updates (newer versions
only; the balancer's own `slots_processing` is never overwritten) and routes every
`Response`/`Error` envelope to the request it answers. The balancer pings every 3 s. When
the socket ends, for whatever reason, the agent leaves the pool, which ends every request
still streaming from it with "Agent controller connection closed".

The upgrade response offers reply batching (`protocol.reply_batching`): our agents then send
the replies of one engine step as one frame; and our status extensions
(`protocol.status_extensions`): our agents then report their prompt state cache in their
status. Paddler's agents ignore both headers. The other way
round, our agents' upgrade requests offer our request extensions (`protocol.request_extensions`):
the agent is registered as accepting them, and a Paddler agent, which does not offer them, gets
requests in Paddler's own shape (`proxy/forwarding.py`). An agent whose registration carries a
`llama_server` status watches a llama-server: it joins as that kind (`protocol.AgentKind`) and
gets neither the applicable state nor requests. The socket is Hypercorn's, served
ahead of Quart (`agent_socket_route.py`). A frame is acted on whole before the reader waits again,
so the tokens it carries for one client are all queued for that client's writer before the
writer wakes: they leave in one write.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import trio

from paddler_trio import PADDLER_COMPATIBLE_VERSION
from paddler_trio.management.agent_message_decoding import decode_agent_frame
from paddler_trio.management.reconciliation import Reconciliation
from paddler_trio.protocol import (
    DeregisterAgentNotification,
    AgentKind,
    ErrorEnvelope,
    RegisterAgentNotification,
    ResponseEnvelope,
    UpdateAgentStatusNotification,
    VersionNotification,
    to_json,
)
from paddler_trio.protocol.reply_batching import (
    REPLY_BATCHING_HEADER,
    REPLY_BATCHING_VERSION,
)
from paddler_trio.protocol.status_extensions import STATUS_EXTENSIONS_HEADER, STATUS_EXTENSIONS_VERSION
from paddler_trio.proxy.agent_controller import AgentController
from paddler_trio.proxy.agent_pool import AgentPool, DuplicateAgent
from paddler_trio.proxy.shutdown_signal import ShutdownSignal
from paddler_trio.queued_messages import queued_texts

_logger = logging.getLogger(__name__)

# Messages queued for one agent: requests are bounded by its slots, so this is never reached
# by a healthy agent; a full queue means the agent stopped reading.
AGENT_SOCKET_PATH_PREFIX = "/api/v1/agent_socket/"
OUTBOX_CAPACITY = 1024
REGISTRATION_TIMEOUT = 10.0
# Messages written to an agent together at most.
MAX_MESSAGES_PER_WRITE = 64
# What the upgrade's answer carries (see the module docstring).
ACCEPT_HEADERS = {REPLY_BATCHING_HEADER: REPLY_BATCHING_VERSION, STATUS_EXTENSIONS_HEADER: STATUS_EXTENSIONS_VERSION}

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY_VIOLATION = 1008


class MessageSocket(Protocol):
    """An accepted agent's WebSocket: Hypercorn's, through ASGI (`agent_socket_route.py`), or a
    test's double. A socket whose other end left cancels its handler."""

    async def accept(self) -> None: ...

    async def receive(self) -> str | bytes: ...

    async def consume(self, take: Callable[[str | bytes], bool]) -> None:
        """Hand every further message to `take` until it returns False; `take` must not block."""

    async def send_texts(self, texts: Iterable[str]) -> None:
        """Each text as its own message, in order."""

    async def close(self, code: int, reason: str | None = None) -> None: ...


class AgentSocket:
    def __init__(self, pool: AgentPool, reconciliation: Reconciliation, shutdown: ShutdownSignal) -> None:
        self._pool = pool
        self._reconciliation = reconciliation
        self._shutdown = shutdown

    async def serve(self, websocket: MessageSocket, agent_id: str, *, accepts_request_extensions: bool = False) -> None:
        """Serve one agent's connection; `websocket` is accepted with `ACCEPT_HEADERS`.
        `accepts_request_extensions`: whether the agent's upgrade request offered them."""
        await websocket.accept()
        await websocket.send_texts([to_json(VersionNotification(version=PADDLER_COMPATIBLE_VERSION))])
        frames = _AgentFrames(websocket, agent_id)
        with self._shutdown.cancel_scope():
            registration = await self._receive_registration(websocket, frames, agent_id)
            if registration is None:
                return
            outbox_send, outbox_receive = trio.open_memory_channel[Any](OUTBOX_CAPACITY)
            agent = AgentController(
                id=agent_id,
                name=registration.name,
                status=registration.slot_aggregated_status_snapshot,
                outbox=outbox_send,
                accepts_request_extensions=accepts_request_extensions,
                kind=(
                    AgentKind.ENGINE
                    if registration.slot_aggregated_status_snapshot.llama_server is None
                    else AgentKind.LLAMA_SERVER
                ),
            )
            try:
                self._pool.register(agent)
            except DuplicateAgent:
                _logger.warning("refused agent %s: an agent with this id is already connected", agent_id)
                await websocket.close(CLOSE_POLICY_VIOLATION, f"agent id {agent_id} is already registered")
                return
            _logger.info("agent %s (%s) registered%s", agent_id, agent.name or "unnamed", _kind_note(agent))
            try:
                self._reconciliation.send_state_to(agent)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write, websocket, outbox_receive, agent)
                    await self._read(websocket, frames, agent)
                    nursery.cancel_scope.cancel()
            finally:
                self._pool.deregister(agent)
                outbox_send.close()
                _logger.info("agent %s left", agent_id)
        if self._shutdown.triggered:
            await websocket.close(CLOSE_GOING_AWAY, "Server shutting down")
        else:
            await websocket.close(1000, "")

    async def _receive_registration(
        self, websocket: MessageSocket, frames: _AgentFrames, agent_id: str
    ) -> RegisterAgentNotification | None:
        with trio.move_on_after(REGISTRATION_TIMEOUT):
            while True:
                messages = await frames.next()
                for index, message in enumerate(messages):
                    if isinstance(message, RegisterAgentNotification):
                        frames.leftover = messages[index + 1 :]
                        return message
                    _logger.warning("agent %s sent %s before RegisterAgent: ignored", agent_id, type(message).__name__)
        _logger.warning("agent %s did not register within %.0f s: closing", agent_id, REGISTRATION_TIMEOUT)
        await websocket.close(CLOSE_POLICY_VIOLATION, "expected RegisterAgent")
        return None

    async def _read(self, websocket: MessageSocket, frames: _AgentFrames, agent: AgentController) -> None:
        """Act on the agent's frames until it deregisters."""

        leftover, frames.leftover = frames.leftover, []
        if self._handle(leftover, agent):
            await websocket.consume(lambda data: self._handle(frames.decode(data), agent))

    def _handle(self, messages: list[Any], agent: AgentController) -> bool:
        """Act on one frame's messages; False when the agent deregistered."""
        for message in messages:
            if isinstance(message, (ResponseEnvelope, ErrorEnvelope)):
                agent.deliver(message.request_id, message)
            elif isinstance(message, UpdateAgentStatusNotification):
                if agent.update_status(message.slot_aggregated_status_snapshot):
                    self._pool.notify_changed()
            elif isinstance(message, DeregisterAgentNotification):
                return False
            elif isinstance(message, RegisterAgentNotification):
                _logger.warning("agent %s registered twice on one connection: ignored", agent.id)
        return True

    async def _write(
        self, websocket: MessageSocket, outbox: trio.MemoryReceiveChannel[Any], agent: AgentController
    ) -> None:
        try:
            async for message in outbox:
                await websocket.send_texts(queued_texts(message, outbox, MAX_MESSAGES_PER_WRITE))
        finally:
            # Once nothing reaches the agent, no request may be handed to it: it leaves the pool
            # before its queue closes (a send into a closed queue would fail the request).
            self._pool.deregister(agent)
            outbox.close()


def _kind_note(agent: AgentController) -> str:
    llama_server = agent.status.llama_server
    if llama_server is not None:
        return f", watching the llama-server at {llama_server.external_llamacpp_addr}"
    if not agent.accepts_request_extensions:
        return ", a Paddler agent: it gets requests in Paddler's shape"
    return ""


class _AgentFrames:
    """An agent's messages a frame at a time (one message, or a batch from our agents)."""

    def __init__(self, websocket: MessageSocket, agent_id: str) -> None:
        self._websocket = websocket
        self._agent_id = agent_id
        # Messages that came in the frame after RegisterAgent; acted on first.
        self.leftover: list[Any] = []

    async def next(self) -> list[Any]:
        """The next frame's valid messages (never empty)."""
        while True:
            messages = self.decode(await self._websocket.receive())
            if messages:
                return messages

    def decode(self, data: str | bytes) -> list[Any]:
        """A frame's valid messages; invalid frames and parts are logged and skipped."""
        if isinstance(data, bytes):
            _logger.warning("agent %s sent a binary frame: ignored", self._agent_id)
            return []
        messages, problems = decode_agent_frame(data)
        for problem in problems:
            _logger.warning("agent %s sent an invalid message (%s): ignored", self._agent_id, problem)
        return messages
