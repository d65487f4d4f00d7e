"""The agent's WebSocket to the balancer: `ws://<management-addr>/api/v1/agent_socket/<agent_id>`.

The socket is trio-websocket's, on a TCP (or TLS) stream the link opens itself, so that the
upgrade names the host as the URL gives it. On every connection: `RegisterAgent` first, then
`UpdateAgentStatus` on every status change and every second, each sent between two engine
steps; incoming `SetState` goes to `on_desired_state` (reconciliation; an agent watching a
llama-server has none and ignores it),
requests and `StopRespondingTo` to request handling. Everything the agent sends
waits in one queue for the link's writer task (`LinkOutbox`); the replies of one engine step
are queued together and go as one frame when the balancer offers it
(`protocol.reply_batching`; Paddler's balancer does not). Likewise the status snapshots carry
the prompt state cache's figures and the loaded projector only when the balancer offers our status extensions
(`protocol.status_extensions`). The upgrade request offers our request extensions in turn
(`protocol.request_extensions`): only then does our balancer send this agent per-request sampling
overrides and tool-call history. When the link drops, the requests it
carried are cancelled and the agent reconnects every second with the same id. When the agent
is shut down it flushes what it has queued, sends `DeregisterAgent` and closes the socket
cleanly (close code 1000).

With `--agent-secret` the upgrade carries `Authorization: Bearer <secret>`; a balancer that
refuses it (HTTP 401) is reported as such and retried with a growing interval (up to
`REFUSED_RETRY_LIMIT`), since only an operator can fix it. `wss://` uses `ssl_context`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
import logging
import ssl
from urllib.parse import urlsplit

import attrs
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    ConnectionTimeout,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)

from paddler_trio import PADDLER_COMPATIBLE_VERSION
from paddler_trio.agent.engine_holder import EngineHolder
from paddler_trio.agent.request_handling import RequestHandling
from paddler_trio.agent.status import AgentStatus
from paddler_trio.protocol import (
    AgentBoundMessage,
    AgentDesiredState,
    BalancerBoundMessage,
    DeregisterAgentNotification,
    ErrorDetails,
    ErrorEnvelope,
    RegisterAgentNotification,
    RequestEnvelope,
    SetStateNotification,
    SlotAggregatedStatusSnapshot,
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
from paddler_trio.protocol.request_extensions import REQUEST_EXTENSIONS_HEADER, REQUEST_EXTENSIONS_VERSION
from paddler_trio.protocol.status_extensions import offers_status_extensions
from paddler_trio.queued_messages import put_into, send_now_into

_logger = logging.getLogger(__name__)

RECONNECT_INTERVAL = 1.0
STATUS_INTERVAL = 1.0
# A snapshot prompted by a change waits this long (seconds): a burst of changes (requests
# starting together) goes as one snapshot, and the request behind a change reaches the
# engine before the snapshot is built.
STATUS_CHANGE_SETTLE = 0.02
# Longest a snapshot waits for the engine's step to end (seconds): a long prefill step does not
# hold the status back for long.
STEP_END_WAIT_LIMIT = 0.25
CONNECT_TIMEOUT = 10.0
# How long a shutting-down agent may spend flushing, deregistering and closing the socket.
GOODBYE_TIMEOUT = 2.0
# Messages waiting for the socket; a full queue holds back the request tasks (back-pressure).
OUTBOUND_QUEUE_SIZE = 256
# Balancer messages carry whole conversations.
MAX_MESSAGE_SIZE = 64 * 2**20
REFUSED_RETRY_LIMIT = 30.0


@attrs.frozen
class BalancerEndpoint:
    """Where a `ws://` or `wss://` URL points: what to connect to and what to ask for."""

    host: str  # without an IPv6 address's brackets, as sockets take it
    port: int
    host_header: str  # as the URL gives it, brackets and port included
    target: str
    tls: bool

    @classmethod
    def of_url(cls, url: str) -> BalancerEndpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"not a WebSocket URL: {url}")
        tls = parts.scheme == "wss"
        return cls(
            host=parts.hostname,
            port=parts.port or (443 if tls else 80),
            host_header=parts.netloc.rpartition("@")[2],
            target=(parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
            tls=tls,
        )


def upgrade_headers(agent_secret: str | None) -> list[tuple[bytes, bytes]]:
    """What the link's upgrade request carries beyond the WebSocket handshake's own headers."""
    headers = [(REQUEST_EXTENSIONS_HEADER.encode(), REQUEST_EXTENSIONS_VERSION.encode())]
    if agent_secret:
        headers.append((b"Authorization", f"Bearer {agent_secret}".encode()))
    return headers


class ManagementLink:
    def __init__(
        self,
        url: str,
        *,
        name: str | None,
        status: AgentStatus,
        engines: EngineHolder,
        on_desired_state: Callable[[AgentDesiredState], None],
        agent_secret: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.url = url
        self._upgrade_headers = upgrade_headers(agent_secret)
        self._endpoint = BalancerEndpoint.of_url(url)
        self._ssl_context = (ssl_context or ssl.create_default_context()) if self._endpoint.tls else None
        self._name = name
        self._status = status
        self._engines = engines
        self._on_desired_state = on_desired_state
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
                    await self._link_once()
                    outage_reported = False
                    retry_interval = RECONNECT_INTERVAL
                    if not self._leaving.is_set():
                        _logger.warning("the link to the balancer ended; reconnecting")
                except ConnectionRejected as error:
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
                except (HandshakeError, trio.TooSlowError, trio.BrokenResourceError, OSError) as error:
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

    async def _link_once(self) -> None:
        """Open the link, serve it until it ends or the agent leaves, then close the connection.

        Raises what kept the link from opening: `ConnectionRejected` (an HTTP answer to the
        upgrade), another `HandshakeError` (no answer, or not a valid one), `trio.TooSlowError`
        and `OSError` (no connection), `trio.BrokenResourceError` (the TLS handshake failed)."""
        stream = await self._open_stream()
        opened = False
        try:
            async with trio.open_nursery() as connection:  # runs the socket's reader task
                try:
                    socket = await self._upgrade(connection, stream)
                    opened = True
                    await self._serve(socket)
                finally:
                    # Ends the reader task, whatever state the socket is in (a clean close has
                    # already closed the stream).
                    await trio.aclose_forcefully(stream)
        except BaseExceptionGroup as group:
            # What the socket's reader task raised (or `_upgrade`'s timeout).
            failure = group.exceptions[0] if len(group.exceptions) == 1 else None
            if opened and isinstance(failure, ConnectionClosed):
                return  # the connection broke while the reader answered a protocol error
            if not opened and isinstance(failure, HandshakeError):
                raise failure from None
            if not opened and isinstance(failure, Exception):
                raise HandshakeError(f"the answer to the upgrade is not valid: {failure}") from None
            raise

    async def _upgrade(
        self, connection: trio.Nursery, stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]
    ) -> WebSocketConnection:
        endpoint = self._endpoint
        # trio-websocket waits for an answer even when the balancer closes without one: the
        # timeout covers that too.
        with trio.move_on_after(CONNECT_TIMEOUT):
            return await wrap_client_stream(
                connection,
                stream,
                endpoint.host_header,
                endpoint.target,
                extra_headers=self._upgrade_headers,
                max_message_size=MAX_MESSAGE_SIZE,
            )
        raise ConnectionTimeout(f"no answer to the upgrade within {CONNECT_TIMEOUT:.0f} s")

    async def _open_stream(self) -> trio.SocketStream | trio.SSLStream[trio.SocketStream]:
        """A connection to the balancer, TLS for wss:// (its handshake done)."""
        with trio.fail_after(CONNECT_TIMEOUT):
            endpoint = self._endpoint
            stream = await trio.open_tcp_stream(endpoint.host, endpoint.port)
            if self._ssl_context is None:
                return stream
            tls = trio.SSLStream(stream, self._ssl_context, server_hostname=endpoint.host, https_compatible=True)
            try:
                await tls.do_handshake()
            except BaseException:
                with trio.CancelScope(shield=True):
                    await stream.aclose()
                raise
            return tls

    async def leave(self) -> None:
        """Stop taking requests, flush, send DeregisterAgent and close the socket (bounded in time)."""
        self._leaving.set()
        with trio.move_on_after(GOODBYE_TIMEOUT + 1):
            await self._left.wait()

    async def _serve(self, socket: WebSocketConnection) -> None:
        _logger.info("connected to the balancer at %s", self.url)
        outbox = LinkOutbox(socket, batching=offers_reply_batching(socket.handshake_headers), on_sent=self._results_sent)
        requests = RequestHandling(self._engines, self._status, outbox.put, outbox.send_now, outbox.all_sent)
        extended = offers_status_extensions(socket.handshake_headers)
        try:
            async with trio.open_nursery() as nursery:
                registration = self._snapshot(requests, extended)
                await outbox.put(RegisterAgentNotification(name=self._name, slot_aggregated_status_snapshot=registration))
                nursery.start_soon(outbox.write_queued, nursery.cancel_scope)
                nursery.start_soon(self._publish_status, outbox, requests, registration.version, extended)
                nursery.start_soon(_cancel_when_set, self._leaving, nursery.cancel_scope)
                await self._receive(socket, nursery, requests, outbox)
                nursery.cancel_scope.cancel()  # the link ended
        finally:
            if socket.closed is None:  # leaving (or cancelled from outside) while the link is up
                with trio.CancelScope(shield=True) as goodbye:
                    goodbye.deadline = trio.current_time() + GOODBYE_TIMEOUT
                    await outbox.say_goodbye(close=self._leaving.is_set())

    def _results_sent(self) -> None:
        """The link has written everything queued: an engine step's hand-off that waits for it may end."""
        if self._engines.engine is not None:
            self._engines.engine.results_sent()

    async def _publish_status(self, outbox: LinkOutbox, requests: RequestHandling, seen_version: int, extended: bool) -> None:
        while True:
            with trio.move_on_after(STATUS_INTERVAL) as interval:
                await self._status.wait_for_change(seen_version)
            if not interval.cancelled_caught:
                await trio.sleep(STATUS_CHANGE_SETTLE)
            await self._engine_between_steps()
            snapshot = self._snapshot(requests, extended)
            seen_version = snapshot.version
            await outbox.put(UpdateAgentStatusNotification(slot_aggregated_status_snapshot=snapshot))

    async def _engine_between_steps(self) -> None:
        """Wait (at most `STEP_END_WAIT_LIMIT`) for the engine's running step to end. A snapshot
        sent mid-step wakes the balancer while llama.cpp's threads compute, and on a machine whose
        cores they all use that stalls the decode (a request's prefill step took a few ms longer
        when a snapshot went during it); sent at the step's end, it goes with the step's replies."""
        engine = self._engines.engine
        if engine is not None:
            with trio.move_on_after(STEP_END_WAIT_LIMIT):
                await engine.wait_for_step_end()

    def _snapshot(self, requests: RequestHandling, extended: bool) -> SlotAggregatedStatusSnapshot:
        """The status to send this balancer: less the slots that other balancers' requests hold
        (when the agent serves several); `extended`: with the loaded projector and the prompt state
        cache's figures (none while no model is loaded). The figures change without a version
        bump, so every snapshot, the one sent every second included, carries the current ones."""
        snapshot = self._status.snapshot(held_elsewhere=self._status.requests_in_flight - requests.in_flight)
        if not extended:
            return snapshot
        snapshot = attrs.evolve(snapshot, multimodal_projection_path=self._status.multimodal_projection_path)
        engine = self._engines.engine
        if engine is None:
            return snapshot
        figures = engine.state_cache_figures
        return attrs.evolve(
            snapshot,
            cache_states=figures.states,
            cache_used_bytes=figures.used_bytes,
            cache_limit_bytes=figures.limit_bytes,
        )

    async def _receive(
        self,
        socket: WebSocketConnection,
        nursery: trio.Nursery,
        requests: RequestHandling,
        outbox: LinkOutbox,
    ) -> None:
        """Act on the balancer's messages until the link ends."""
        while True:
            try:
                text = await socket.get_message()
            except ConnectionClosed:
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
                    await outbox.put(
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
            self._on_desired_state(message.desired_state)
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


class LinkOutbox:
    """What the agent sends on one connection. Every message waits in a bounded queue for the
    writer task, which sends what is queued together as one frame when the balancer offers reply
    batching, else one message per frame."""

    def __init__(self, socket: WebSocketConnection, *, batching: bool, on_sent: Callable[[], None]) -> None:
        """`on_sent` is called whenever the writer has sent everything that was queued."""
        self._socket = socket
        self._batching = batching
        self._on_sent = on_sent
        send, self._pending = trio.open_memory_channel[BalancerBoundMessage](OUTBOUND_QUEUE_SIZE)
        self._put = put_into(send)
        self._send_now = send_now_into(send)
        # Messages (as JSON) the writer has taken from the queue and not sent yet: when the writer
        # is cancelled (the agent leaving), `say_goodbye` sends them first.
        self._taken: list[str] = []
        # Messages put in and not written yet. Not the queue's length: a message put while the
        # writer waits goes straight to the writer, and the queue looks empty before it is sent.
        self._unwritten = 0

    async def put(self, message: BalancerBoundMessage) -> None:
        """Queue `message`; request tasks wait here while the queue is full (back-pressure)."""
        self._unwritten += 1
        try:
            await self._put(message)
        except BaseException:
            self._unwritten -= 1
            raise

    def send_now(self, message: BalancerBoundMessage) -> bool:
        """Queue `message` without waiting, as the engine's hand-off does; False when the queue is
        full (the request task then forwards the result itself, with `put`)."""
        if not self._send_now(message):
            return False
        self._unwritten += 1
        return True

    async def write_queued(self, link_scope: trio.CancelScope) -> None:
        """Send queued messages; cancel `link_scope` when the socket no longer takes them."""
        try:
            async for message in self._pending:
                self._taken.append(to_json(message))
                if self._batching:
                    if not self._pending.statistics().current_buffer_used:
                        # One scheduler round lets the other requests of the same engine step queue theirs.
                        await trio.lowlevel.checkpoint()
                    self._take_queued(MAX_MESSAGES_PER_FRAME)
                await self._socket.send_message(batch_frame(self._taken))
                self._unwritten -= len(self._taken)
                self._taken.clear()
                if self.all_sent():
                    self._on_sent()
        except ConnectionClosed:
            link_scope.cancel()

    def all_sent(self) -> bool:
        """Whether everything queued has been written (nothing waits, nothing is being sent)."""
        return self._unwritten == 0

    def _take_queued(self, limit: int | None = None) -> None:
        """Move what is queued to `_taken`, until `_taken` holds `limit` messages."""
        while limit is None or len(self._taken) < limit:
            try:
                self._taken.append(to_json(self._pending.receive_nowait()))
            except (trio.WouldBlock, trio.EndOfChannel):
                return

    async def say_goodbye(self, *, close: bool) -> None:
        """Send what is taken or queued and `DeregisterAgent`, one message per frame; with `close`,
        close the socket with code 1000 and wait for the balancer's answer (not when cancelled from
        outside: the socket's reader task is gone and the wait would only time out)."""
        self._take_queued()
        texts = [*self._taken, to_json(DeregisterAgentNotification())]
        self._taken.clear()
        self._unwritten = 0
        try:
            for text in texts:
                await self._socket.send_message(text)
            _logger.info("deregistered from the balancer")
            if close:
                await self._socket.aclose(1000)
        except ConnectionClosed:
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
    cause = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    if isinstance(error, trio.TooSlowError):
        return f"no connection within {CONNECT_TIMEOUT:.0f} s"
    if cause is not None and str(cause):
        return str(cause)
    return str(error) or type(error).__name__
