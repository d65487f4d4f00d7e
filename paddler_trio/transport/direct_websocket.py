"""Our own WebSocket on a Trio stream (wsproto), for both ends of a connection: the server
side of the upgrades that a port's front takes over from Hypercorn (`connection_front.py`: the
inference socket and the agents' link), and the agent's client side of its link (`connect`).

Through ASGI every message costs its own trip through Quart, Hypercorn and a socket write
(about 80 µs each on a small machine); here `send_texts` frames any number of messages and
writes them with one `send_all`, and `send_text_now`/`send_texts_now` write at once from any
task when nothing is being written (`stream_writer.py`). What Hypercorn did for these sockets
is done here too: pings every `ping_interval`, answers to the other end's pings, a 1009 close
for a message over `max_message_bytes`, and the closing handshake. Permessage-deflate is
declined (allowed by RFC 6455): token messages are short, and compressing each would cost more
than it saves. Frames are read whole (`websocket_frames.py`): a client's frame that is a
message by itself is decoded there, any other goes through wsproto.

`serve` and `connect` run a handler with the open socket and cancel it when the other end
closes or the connection breaks, as Quart does for its WebSocket handlers.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from paddler_trio.transport.stream_writer import StreamWriter
from paddler_trio.transport.websocket_frames import (
    FrameSplitter,
    FrameTooBig,
    plain_message,
)

_logger = logging.getLogger(__name__)

RECEIVE_SIZE = 65536
# Messages from the client queued before the reader waits for the handler.
INCOMING_CAPACITY = 64
# How long a closing handshake may take before the connection is dropped.
CLOSE_TIMEOUT = 2.0
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class WebSocketRefused(Exception):
    """The server answered the upgrade with an HTTP status instead of accepting it."""

    def __init__(self, status_code: int) -> None:
        super().__init__(f"the server refused the WebSocket with HTTP {status_code}")
        self.status_code = status_code


class WebSocketHandshakeFailed(Exception):
    """The server did not complete the WebSocket handshake."""


# What the reader takes for the connection's end (the other side left, or broke the protocol).
_CONNECTION_ENDS = (trio.BrokenResourceError, trio.ClosedResourceError, RemoteProtocolError, LocalProtocolError)


class DirectWebSocket:
    """An open WebSocket, either end (see the module docstring)."""

    def __init__(self, stream: trio.abc.Stream, connection: WSConnection, *, max_message_bytes: int) -> None:
        self._stream = stream
        self._connection = connection
        self._max_message_bytes = max_message_bytes
        self._writer: StreamWriter | None = None  # from `_run` on
        self._incoming_send, self._incoming = trio.open_memory_channel[str | bytes](INCOMING_CAPACITY)
        # Set by `consume`: the reader hands messages to it instead of queueing them.
        self._take: Callable[[str | bytes], bool] | None = None
        self._taking_ended = trio.Event()
        self._frames = FrameSplitter(max_message_bytes)
        # The parts so far of a message that came in several frames (through wsproto).
        self._parts: list[str | bytes] = []
        self._parts_size = 0
        self._closing = False
        # The headers of the server's answer to the upgrade (the client side's).
        self.handshake_headers: list[tuple[bytes, bytes]] = []
        # Whether the connection has ended (closed by either side, or broken).
        self.ended = False

    async def accept(self) -> None:
        """Nothing to do: the socket was accepted before the handler runs (Quart's socket needs it)."""

    async def receive(self) -> str | bytes:
        """The next whole message; waits forever once the client has closed (the handler is cancelled then)."""
        try:
            return await self._incoming.receive()
        except trio.EndOfChannel:
            await trio.sleep_forever()
            raise AssertionError("unreachable") from None

    async def consume(self, take: Callable[[str | bytes], bool]) -> None:
        """Hand every further message to `take` until it returns False. The reader task calls
        `take` as it decodes each message, with no channel and no task switch in between."""
        while True:  # first what is already queued, in order
            try:
                message = self._incoming.receive_nowait()
            except trio.WouldBlock:
                break
            except trio.EndOfChannel:
                await trio.sleep_forever()  # the client has closed: the handler is being cancelled
            if not take(message):
                return
        self._take = take
        try:
            await self._taking_ended.wait()
        finally:
            self._take = None
            self._taking_ended = trio.Event()

    async def send_texts(self, texts: Iterable[str]) -> None:
        """Each text as its own message, all in one write; `trio.ClosedResourceError` once
        either side has started closing."""
        if not self._is_open():
            raise trio.ClosedResourceError("the WebSocket is closing or closed")
        await self._write(self._frames_of(texts))

    def can_send_now(self) -> bool:
        """Whether `send_text_now` and `send_texts_now` would write."""
        return self._writer is not None and self._is_open() and self._writer.can_send_now()

    def _is_open(self) -> bool:
        # A client's close is answered by the reader before the handler's tasks are cancelled:
        # meanwhile other tasks (the agent socket's reader handing tokens on) must see it closed.
        # (Our own close leaves the OPEN state too, when its frame is made.)
        return not self.ended and self._connection.state is ConnectionState.OPEN

    def send_text_now(self, text: str) -> bool:
        """`text` as a message written at once if nothing is being written (`StreamWriter.send_now`)."""
        return self.send_texts_now((text,))

    def send_texts_now(self, texts: Iterable[str]) -> bool:
        """Each text as its own message, written at once in one write if nothing is being written."""
        if not self.can_send_now():
            return False
        assert self._writer is not None
        return self._writer.send_now(self._frames_of(texts))

    def _frames_of(self, texts: Iterable[str]) -> bytes:
        return b"".join(self._connection.send(TextMessage(data=text)) for text in texts)

    async def close(self, code: int, reason: str | None = None) -> None:
        """Start the closing handshake; the client's answer (or CLOSE_TIMEOUT) ends `serve`."""
        if self._closing:
            return
        self._closing = True
        try:
            await self._write(self._connection.send(CloseConnection(code=code, reason=reason)))
        except LocalProtocolError:
            pass

    async def _write(self, data: bytes) -> None:
        assert self._writer is not None
        await self._writer.send_all(data)

    async def _run(
        self,
        handler: Callable[[DirectWebSocket], Awaitable[None]],
        ping_interval: float | None,
        *,
        answer: bytes = b"",
        early_frames: bytes = b"",
    ) -> None:
        """Send `answer` (the server's acceptance), then serve `handler` with the other end's
        messages and the pings until either side ends."""
        if answer:  # nothing else writes before the writer exists
            await self._stream.send_all(answer)
        self._frames.feed(early_frames)
        async with trio.open_nursery() as nursery:
            self._writer = StreamWriter(self._stream, nursery)
            nursery.start_soon(self._read, nursery.cancel_scope)
            if ping_interval is not None:
                nursery.start_soon(self._ping, ping_interval)
            await handler(self)
            # The handler closed the socket (e.g. on shutdown): give the client a moment to answer.
            nursery.cancel_scope.deadline = trio.current_time() + CLOSE_TIMEOUT

    async def _read(self, scope: trio.CancelScope) -> None:
        """Feed the client's messages to `receive`; cancel `scope` when the connection ends."""
        try:
            async with self._incoming_send:
                # What came together with the handshake: frames wsproto holds (the client side's) ...
                if not await self._act_on_wsproto_events():
                    return
                while True:
                    # ... and, in the first round, those the client sent with the upgrade request.
                    for frame in self._frames.frames():
                        message = None if self._parts else plain_message(frame)
                        if message is not None:
                            await self._hand_on(message)
                        elif not await self._through_wsproto(frame):
                            return
                    data = await self._stream.receive_some(RECEIVE_SIZE)
                    if not data:
                        return
                    self._frames.feed(data)
        except FrameTooBig:
            await self._close_too_big()
        except _CONNECTION_ENDS:
            return
        finally:
            self.ended = True
            scope.cancel()

    async def _through_wsproto(self, frame: bytes) -> bool:
        """Act on a frame that is not a message by itself; False when the connection ends."""
        self._connection.receive_data(frame)
        return await self._act_on_wsproto_events()

    async def _act_on_wsproto_events(self) -> bool:
        """Act on what wsproto has decoded; False when the connection ends."""
        for event in self._connection.events():
            if isinstance(event, Message):
                self._parts.append(event.data)
                self._parts_size += len(event.data)
                if self._parts_size > self._max_message_bytes:
                    await self._close_too_big()
                    return False
                if event.message_finished:
                    parts, self._parts, self._parts_size = self._parts, [], 0
                    message = "".join(parts) if isinstance(event, TextMessage) else b"".join(parts)  # type: ignore[arg-type]
                    await self._hand_on(message)
            elif isinstance(event, Ping):
                await self._write(self._connection.send(event.response()))
            elif isinstance(event, CloseConnection):
                if self._connection.state is ConnectionState.REMOTE_CLOSING:
                    await self._write(self._connection.send(event.response()))
                elif self._connection.state is ConnectionState.OPEN:
                    # A frame that breaks the protocol: say why before dropping the connection.
                    _logger.info("WebSocket: %s (close code %d)", event.reason, event.code)
                    await self.close(event.code, event.reason)
                return False
        return True

    async def _hand_on(self, message: str | bytes) -> None:
        """To `consume`'s taker if one is set, else into the queue that `receive` reads."""
        if self._take is None:
            await self._incoming_send.send(message)
            return
        try:
            keep_taking = self._take(message)
        except _CONNECTION_ENDS as error:
            # Another stream's error (the taker writes to clients): it must not pass for this
            # connection's end, which `_read` would take it for, quietly.
            raise RuntimeError(f"the WebSocket's message taker failed: {error!r}") from error
        if not keep_taking:
            self._take = None
            self._taking_ended.set()

    async def _close_too_big(self) -> None:
        _logger.info("WebSocket: a message over %d bytes, closing", self._max_message_bytes)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.close(CloseReason.MESSAGE_TOO_BIG)

    async def _ping(self, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            if self._closing:
                return
            try:
                await self._write(self._connection.send(Ping()))
            except LocalProtocolError:  # the client has started closing
                return


async def serve(
    stream: trio.abc.Stream,
    request_bytes: bytes,
    handler: Callable[[DirectWebSocket], Awaitable[None]],
    *,
    max_message_bytes: int,
    ping_interval: float | None,
    accept_headers: Mapping[str, str] | None = None,
) -> None:
    """Accept the WebSocket upgrade in `request_bytes` (its HTTP request, and whatever the client
    sent after it) with `accept_headers` on the answer, and run `handler` with the socket until
    either ends; then close the stream."""
    connection = WSConnection(ConnectionType.SERVER)
    # wsproto drops what follows the request head when it accepts: hand that over afterwards.
    head_end = request_bytes.find(b"\r\n\r\n") + 4
    head, early_frames = request_bytes[:head_end], request_bytes[head_end:]
    try:
        connection.receive_data(head)
        request = next(connection.events())
        if not isinstance(request, Request):
            raise RemoteProtocolError("expected a WebSocket upgrade request")
    except RemoteProtocolError as error:
        _logger.info("refused a WebSocket upgrade: %s", error)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(BAD_REQUEST)
        await stream.aclose()
        return
    socket = DirectWebSocket(stream, connection, max_message_bytes=max_message_bytes)
    headers = [(name.encode(), value.encode()) for name, value in (accept_headers or {}).items()]
    answer = connection.send(AcceptConnection(extra_headers=headers))
    await _run_then_close(socket, stream, handler, ping_interval, answer=answer, early_frames=early_frames)


async def connect(
    stream: trio.abc.Stream,
    handler: Callable[[DirectWebSocket], Awaitable[None]],
    *,
    host: str,
    target: str,
    extra_headers: Mapping[str, str],
    max_message_bytes: int,
    handshake_timeout: float,
) -> None:
    """Open a WebSocket on `stream` as its client (`target` on `host`, with `extra_headers` on the
    upgrade request) and run `handler` with it until either side ends; then close the stream.
    The server's pings are answered; this side sends none.

    Raises `WebSocketRefused` when the server answers with an HTTP status instead, and
    `WebSocketHandshakeFailed` when it closes, breaks the protocol or takes longer than
    `handshake_timeout` seconds to answer."""
    connection = WSConnection(ConnectionType.CLIENT)
    headers = [(name.encode(), value.encode()) for name, value in extra_headers.items()]
    try:
        with trio.fail_after(handshake_timeout):
            await stream.send_all(connection.send(Request(host=host, target=target, extra_headers=headers)))
            accepted = await _answer_to_upgrade(stream, connection)
    except BaseException as error:
        with trio.CancelScope(shield=True):
            await stream.aclose()
        if isinstance(error, trio.TooSlowError):
            raise WebSocketHandshakeFailed(f"no answer to the upgrade within {handshake_timeout:g} s") from None
        raise
    socket = DirectWebSocket(stream, connection, max_message_bytes=max_message_bytes)
    socket.handshake_headers = list(accepted.extra_headers)
    await _run_then_close(socket, stream, handler, None)


async def _answer_to_upgrade(stream: trio.abc.Stream, connection: WSConnection) -> AcceptConnection:
    while True:
        data = await stream.receive_some(RECEIVE_SIZE)
        if not data:
            raise WebSocketHandshakeFailed("the server closed the connection during the handshake")
        try:
            connection.receive_data(data)
            # What follows the answer stays in wsproto, for the socket's reader.
            for event in connection.events():
                if isinstance(event, AcceptConnection):
                    return event
                if isinstance(event, RejectConnection):
                    raise WebSocketRefused(event.status_code)
        except RemoteProtocolError as error:
            raise WebSocketHandshakeFailed(f"the server's answer to the upgrade is not valid: {error}") from None


async def _run_then_close(
    socket: DirectWebSocket,
    stream: trio.abc.Stream,
    handler: Callable[[DirectWebSocket], Awaitable[None]],
    ping_interval: float | None,
    **opening: bytes,
) -> None:
    try:
        await socket._run(handler, ping_interval, **opening)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        socket.ended = True
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
            await stream.aclose()
