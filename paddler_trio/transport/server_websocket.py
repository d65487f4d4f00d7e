"""The server's side of an accepted WebSocket (`http_server.Exchange.accept_websocket`): a
sans-IO `wsproto` connection driven by the task that reads it.

`send_texts` frames any number of messages and writes them with one `send_all`. `receive` also
answers the client's pings and its closing handshake, and ends the socket with 1009 for a
message over `max_message_bytes`, as Hypercorn does. Permessage-deflate is not offered (RFC
6455 allows that): token messages are short, and compressing each would cost more than it saves.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

import trio
import wsproto.connection
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, TextMessage
from wsproto.frame_protocol import CloseReason

RECEIVE_SIZE = 65536
# How long our closing handshake waits for the client's answer.
CLOSE_TIMEOUT = 2.0


class ServerWebSocket:
    def __init__(
        self, stream: trio.abc.Stream, connection: wsproto.connection.Connection, *, max_message_bytes: int
    ) -> None:
        self._stream = stream
        self._connection = connection
        self._max_message_bytes = max_message_bytes
        self._send_lock = trio.StrictFIFOLock()
        self._messages: collections.deque[str | bytes] = collections.deque()
        self._parts: list[str | bytes] = []
        self._parts_size = 0
        self._ended = False

    async def receive(self) -> str | bytes | None:
        """The next whole message; None once the socket has ended (closed by either side, or broken)."""
        while not self._messages and not self._ended:
            await self._act_on_events()  # first those already here (a client may send with its upgrade)
            if self._messages or self._ended:
                break
            try:
                data = await self._stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self._ended = True
                break
            self._connection.receive_data(data)
        return self._messages.popleft() if self._messages else None

    async def send_texts(self, texts: Iterable[str]) -> None:
        """Each text as its own message, all in one write; `trio.ClosedResourceError` once either
        side has started closing."""
        if self._connection.state is not ConnectionState.OPEN:
            raise trio.ClosedResourceError("the WebSocket is closing or closed")
        await self._write(b"".join(self._connection.send(TextMessage(data=text)) for text in texts))

    async def close(self, code: int, reason: str | None = None) -> None:
        """Our closing handshake: the close frame, then the client's answer (at most CLOSE_TIMEOUT)."""
        if self._connection.state is not ConnectionState.OPEN:
            return
        await self._write(self._connection.send(CloseConnection(code=code, reason=reason)))
        with trio.move_on_after(CLOSE_TIMEOUT):
            while await self.receive() is not None:
                pass

    async def ping_every(self, interval: float) -> None:
        """Ping the client every `interval` seconds while the socket is open (idle clients and
        proxies then keep the connection)."""
        while True:
            await trio.sleep(interval)
            if self._connection.state is not ConnectionState.OPEN:
                return
            try:
                await self._write(self._connection.send(Ping()))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the reader sees the end too

    async def _act_on_events(self) -> None:
        for event in self._connection.events():
            if isinstance(event, Message):
                await self._add_part(event)
            elif isinstance(event, Ping):
                await self._write(self._connection.send(event.response()))
            elif isinstance(event, CloseConnection):
                # The client's close (or wsproto's, for a frame that broke the protocol): answer it.
                if self._connection.state is not ConnectionState.CLOSED:
                    await self._write(self._connection.send(event.response()))
                self._ended = True

    async def _add_part(self, event: TextMessage | BytesMessage) -> None:
        self._parts.append(event.data)
        self._parts_size += len(event.data)
        if self._parts_size > self._max_message_bytes:
            self._parts, self._parts_size = [], 0
            await self._write(self._connection.send(CloseConnection(code=CloseReason.MESSAGE_TOO_BIG)))
            self._ended = True
            return
        if event.message_finished:
            empty: str | bytes = "" if isinstance(event, TextMessage) else b""
            self._messages.append(empty.join(self._parts))  # type: ignore[arg-type]
            self._parts, self._parts_size = [], 0

    async def _write(self, data: bytes) -> None:
        async with self._send_lock:
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._ended = True
                raise

