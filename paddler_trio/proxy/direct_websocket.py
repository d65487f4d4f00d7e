"""A server-side WebSocket on a Trio stream (wsproto), for the upgrades that a port's front
takes over from Hypercorn (`connection_front.py`): the inference socket and the agents' link.

Through ASGI every message costs its own trip through Quart, Hypercorn and a socket write
(about 80 µs each on a small machine); here `send_texts` frames any number of messages and
writes them with one `send_all`, and `send_text_now` writes one at once from any task when
nothing is being written (`stream_writer.py`). What Hypercorn did for these sockets is done here too: pings
every `ping_interval`, answers to the client's pings, a 1009 close for a message over
`max_message_bytes`, and the closing handshake. Permessage-deflate is declined (allowed by
RFC 6455): token messages are short, and compressing each would cost more than it saves.
Frames are read whole (`websocket_frames.py`): a frame that is a message by itself is decoded
there, any other goes through wsproto.

`serve` runs a handler with the open socket and cancels it when the client closes or the
connection breaks, as Quart does for its WebSocket handlers.
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
    Request,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from paddler_trio.proxy.stream_writer import StreamWriter
from paddler_trio.proxy.websocket_frames import (
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


class DirectWebSocket:
    """An accepted server-side WebSocket (see the module docstring)."""

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
        """Each text as its own message, all in one write."""
        await self._write(b"".join(self._connection.send(TextMessage(data=text)) for text in texts))

    def send_text_now(self, text: str) -> bool:
        """`text` as a message written at once if nothing is being written (`StreamWriter.send_now`)."""
        if self._writer is None or self._closing or not self._writer.can_send_now():
            return False
        return self._writer.send_now(self._connection.send(TextMessage(data=text)))

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
        early_frames: bytes,
        ping_interval: float | None,
        accept_headers: list[tuple[bytes, bytes]],
    ) -> None:
        """Accept, then serve `handler` with the client's messages and the pings until either side ends."""
        # Nothing else writes before the writer exists.
        await self._stream.send_all(self._connection.send(AcceptConnection(extra_headers=accept_headers)))
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
                while True:
                    # The first round handles what the client sent together with the upgrade request.
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
        except (trio.BrokenResourceError, trio.ClosedResourceError, RemoteProtocolError, LocalProtocolError):
            return
        finally:
            scope.cancel()

    async def _through_wsproto(self, frame: bytes) -> bool:
        """Act on a frame that is not a message by itself; False when the connection ends."""
        self._connection.receive_data(frame)
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
        elif not self._take(message):
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
    try:
        headers = [(name.encode(), value.encode()) for name, value in (accept_headers or {}).items()]
        await socket._run(handler, early_frames, ping_interval, headers)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
            await stream.aclose()
