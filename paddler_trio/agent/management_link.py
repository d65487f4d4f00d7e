"""The agent's WebSocket to the balancer: `ws://<management-addr>/api/v1/agent_socket/<agent_id>`.

On every connection: `RegisterAgent` first, then `UpdateAgentStatus` on every status change
and every second; incoming `SetState` goes to reconciliation, requests and
`StopRespondingTo` to request handling. Replies of one engine step go as one frame when the
balancer offers it (`protocol.reply_batching`; Paddler's balancer does not). When the link
drops, the requests it carried are cancelled and the agent reconnects every second with the
same id. When the agent is shut
down it flushes what it has queued, sends `DeregisterAgent` and closes the socket cleanly.

With `--agent-secret` the upgrade carries `Authorization: Bearer <secret>`; a balancer that
refuses it (HTTP 401) is reported as such and retried with a growing interval (up to
`REFUSED_RETRY_LIMIT`), since only an operator can fix it. `wss://` uses `ssl_context`.
"""

from __future__ import annotations

import json
import logging
import ssl

import trio
import trio_websocket

from paddler_trio import PADDLER_COMPATIBLE_VERSION
from paddler_trio.agent.engine_holder import EngineHolder
from paddler_trio.agent.reconciliation import Reconciliation
from paddler_trio.agent.request_handling import RequestHandling
from paddler_trio.agent.status import AgentStatus
from paddler_trio.protocol import (
    AgentBoundMessage,
    BalancerBoundMessage,
    DeregisterAgentNotification,
    ErrorDetails,
    ErrorEnvelope,
    RegisterAgentNotification,
    RequestEnvelope,
    SetStateNotification,
    StopRespondingToNotification,
    UpdateAgentStatusNotification,
    VersionNotification,
    WireFormatError,
    from_json,
    to_json,
)
from paddler_trio.protocol.reply_batching import (
    MAX_MESSAGES_PER_FRAME,
    batch_frame,
    offers_reply_batching,
)
from paddler_trio.queued_messages import put_into, queued_texts, send_now_into

_logger = logging.getLogger(__name__)

RECONNECT_INTERVAL = 1.0
STATUS_INTERVAL = 1.0
# A snapshot prompted by a change waits this long (seconds): a burst of changes (requests
# starting together) goes as one snapshot, and the request behind a change reaches the
# engine before the snapshot is built.
STATUS_CHANGE_SETTLE = 0.02
CONNECT_TIMEOUT = 10.0
# How long a shutting-down agent may spend flushing, deregistering and closing the socket.
GOODBYE_TIMEOUT = 2.0
# Messages waiting for the socket; a full queue holds back the request tasks (back-pressure).
OUTBOUND_QUEUE_SIZE = 256
# Balancer messages carry whole conversations; trio-websocket's 1 MiB default is too small.
MAX_MESSAGE_SIZE = 64 * 2**20
REFUSED_RETRY_LIMIT = 30.0


class ManagementLink:
    def __init__(
        self,
        url: str,
        *,
        name: str | None,
        status: AgentStatus,
        engines: EngineHolder,
        reconciliation: Reconciliation,
        agent_secret: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.url = url
        self._extra_headers = [("Authorization", f"Bearer {agent_secret}")] if agent_secret else []
        self._ssl_context = ssl_context
        self._name = name
        self._status = status
        self._engines = engines
        self._reconciliation = reconciliation
        self._leaving = trio.Event()
        self._left = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep a link to the balancer until `leave()` (ready as soon as it tries to connect)."""
        task_status.started()
        outage_reported = False
        retry_interval = RECONNECT_INTERVAL
        try:
            while not self._leaving.is_set():
                try:
                    async with trio_websocket.open_websocket_url(
                        self.url,
                        ssl_context=self._ssl_context,
                        extra_headers=self._extra_headers,
                        connect_timeout=CONNECT_TIMEOUT,
                        max_message_size=MAX_MESSAGE_SIZE,
                    ) as socket:
                        _logger.info("connected to the balancer at %s", self.url)
                        outage_reported = False
                        retry_interval = RECONNECT_INTERVAL
                        await self._serve(socket)
                        if not self._leaving.is_set():
                            _logger.warning("the balancer closed the link (%s); reconnecting", socket.closed)
                except trio_websocket.ConnectionRejected as error:
                    if error.status_code not in (401, 403):
                        if not outage_reported:
                            _logger.warning("the balancer at %s rejected the link with HTTP %d; retrying", self.url, error.status_code)
                            outage_reported = True
                        with trio.move_on_after(RECONNECT_INTERVAL):
                            await self._leaving.wait()
                        continue
                    _logger.error(
                        "the balancer refused this agent: wrong or missing --agent-secret (HTTP %d from %s); "
                        "retrying in %.0f s",
                        error.status_code,
                        self.url,
                        retry_interval,
                    )
                    with trio.move_on_after(retry_interval):
                        await self._leaving.wait()
                    retry_interval = min(retry_interval * 2, REFUSED_RETRY_LIMIT)
                    continue
                except (trio_websocket.HandshakeError, trio_websocket.ConnectionClosed, OSError) as error:
                    if not outage_reported:
                        _logger.warning(
                            "cannot reach the balancer at %s (%s); retrying every %.0f s",
                            self.url,
                            _describe_failure(error),
                            RECONNECT_INTERVAL,
                        )
                        outage_reported = True
                with trio.move_on_after(RECONNECT_INTERVAL):
                    await self._leaving.wait()
        finally:
            self._left.set()

    async def leave(self) -> None:
        """Stop taking requests, flush, send DeregisterAgent and close the socket (bounded in time)."""
        self._leaving.set()
        with trio.move_on_after(GOODBYE_TIMEOUT + 1):
            await self._left.wait()

    async def _serve(self, socket: trio_websocket.WebSocketConnection) -> None:
        send, pending = trio.open_memory_channel[BalancerBoundMessage](OUTBOUND_QUEUE_SIZE)
        requests = RequestHandling(self._engines, self._status, put_into(send), send_now_into(send))
        try:
            async with trio.open_nursery() as nursery:
                registration = self._status.snapshot()
                send.send_nowait(
                    RegisterAgentNotification(name=self._name, slot_aggregated_status_snapshot=registration)
                )
                batching = offers_reply_batching(socket.handshake_headers)
                nursery.start_soon(self._write, socket, pending, nursery.cancel_scope, batching)
                nursery.start_soon(self._publish_status, send, registration.version)
                nursery.start_soon(_cancel_when_set, self._leaving, nursery.cancel_scope)
                await self._receive(socket, nursery, requests, send)
                nursery.cancel_scope.cancel()  # the link is gone: cancel its requests
        finally:
            if socket.closed is None:  # leaving (or cancelled from outside) while the link is up
                with trio.CancelScope(shield=True) as goodbye:
                    goodbye.deadline = trio.current_time() + GOODBYE_TIMEOUT
                    # Cancelled from outside, trio-websocket's reader is gone and a close
                    # handshake would only time out: deregister and let the socket drop.
                    await self._say_goodbye(socket, pending, close=self._leaving.is_set())

    async def _write(
        self,
        socket: trio_websocket.WebSocketConnection,
        pending: trio.MemoryReceiveChannel[BalancerBoundMessage],
        link_scope: trio.CancelScope,
        batching: bool,
    ) -> None:
        """Send queued messages; with `batching`, all that are queued together go as one frame."""
        try:
            async for message in pending:
                if not batching:
                    await socket.send_message(to_json(message))
                    continue
                if not pending.statistics().current_buffer_used:
                    # One scheduler round lets the other requests of the same engine step queue
                    # theirs (the engine's hand-off to request takers queues them all at once).
                    await trio.lowlevel.checkpoint()
                await socket.send_message(batch_frame(queued_texts(message, pending, MAX_MESSAGES_PER_FRAME)))
        except trio_websocket.ConnectionClosed:
            link_scope.cancel()

    async def _publish_status(self, send: trio.MemorySendChannel[BalancerBoundMessage], seen_version: int) -> None:
        while True:
            with trio.move_on_after(STATUS_INTERVAL) as interval:
                await self._status.wait_for_change(seen_version)
            if not interval.cancelled_caught:
                await trio.sleep(STATUS_CHANGE_SETTLE)
            snapshot = self._status.snapshot()
            seen_version = snapshot.version
            await send.send(UpdateAgentStatusNotification(slot_aggregated_status_snapshot=snapshot))

    async def _receive(
        self,
        socket: trio_websocket.WebSocketConnection,
        nursery: trio.Nursery,
        requests: RequestHandling,
        send: trio.MemorySendChannel[BalancerBoundMessage],
    ) -> None:
        while True:
            try:
                text = await socket.get_message()
            except trio_websocket.ConnectionClosed:
                return
            if isinstance(text, bytes):
                _logger.warning("ignoring a binary frame from the balancer (%d bytes)", len(text))
                continue
            try:
                message = from_json(text, AgentBoundMessage)
            except WireFormatError as error:
                request_id = _request_id_of(text)
                _logger.warning("cannot understand a message from the balancer: %s", error)
                if request_id is not None:
                    await send.send(
                        ErrorEnvelope(
                            request_id=request_id,
                            error=ErrorDetails(code=400, description=f"Cannot parse the request: {error}"),
                        )
                    )
                continue
            await self._dispatch(message, nursery, requests)

    async def _dispatch(self, message: AgentBoundMessage, nursery: trio.Nursery, requests: RequestHandling) -> None:
        if isinstance(message, RequestEnvelope):
            await requests.handle(nursery, message)
        elif isinstance(message, StopRespondingToNotification):
            requests.stop_responding_to(message.request_id)
        elif isinstance(message, SetStateNotification):
            self._reconciliation.set_desired_state(message.desired_state)
        elif isinstance(message, VersionNotification):
            if message.version != PADDLER_COMPATIBLE_VERSION:
                _logger.warning(
                    "the balancer speaks Paddler %s; this agent speaks %s", message.version, PADDLER_COMPATIBLE_VERSION
                )
        elif isinstance(message, ErrorEnvelope):
            _logger.warning(
                "the balancer reported an error for %r: %d %s",
                message.request_id,
                message.error.code,
                message.error.description,
            )

    async def _say_goodbye(
        self,
        socket: trio_websocket.WebSocketConnection,
        pending: trio.MemoryReceiveChannel[BalancerBoundMessage],
        *,
        close: bool,
    ) -> None:
        try:
            while True:
                try:
                    message = pending.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                await socket.send_message(to_json(message))
            await socket.send_message(to_json(DeregisterAgentNotification()))
            _logger.info("deregistered from the balancer")
            if close:
                await socket.aclose()
        except trio_websocket.ConnectionClosed:
            pass


async def _cancel_when_set(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def _request_id_of(text: str) -> str | None:
    """The id of a Request frame that did not decode, so the balancer can be told about it."""
    try:
        frame = json.loads(text)
    except ValueError:
        return None
    if isinstance(frame, dict) and isinstance(frame.get("Request"), dict):
        request_id = frame["Request"].get("id")
        if isinstance(request_id, str):
            return request_id
    return None


def _describe_failure(error: BaseException) -> str:
    cause = error.__cause__ or error.__context__
    if isinstance(error, trio_websocket.ConnectionRejected):
        return f"rejected with HTTP {error.status_code}"
    if cause is not None and str(cause):
        return str(cause)
    return str(error) or type(error).__name__
