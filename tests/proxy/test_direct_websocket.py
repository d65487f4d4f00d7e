"""`DirectWebSocket.consume`: the reader hands messages to a taker, in order with those queued
for `receive` before it, and stops when the taker says so (the agent socket reads this way)."""

from __future__ import annotations

import functools

import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage

from paddler_trio.proxy.direct_websocket import DirectWebSocket, serve


class _Client:
    """A WebSocket client on one end of an in-memory stream."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.connection = WSConnection(ConnectionType.CLIENT)

    def upgrade_request(self) -> bytes:
        return self.connection.send(Request(host="localhost", target="/socket"))

    async def read_acceptance(self) -> None:
        while True:
            self.connection.receive_data(await self.stream.receive_some(65536))
            if any(isinstance(event, AcceptConnection) for event in self.connection.events()):
                return

    async def send(self, *texts: str) -> None:
        await self.stream.send_all(b"".join(self.connection.send(TextMessage(data=text)) for text in texts))


async def test_consume_takes_queued_messages_first_then_new_ones_until_the_taker_stops() -> None:
    server_stream, client_stream = trio.testing.memory_stream_pair()
    client = _Client(client_stream)
    seen: list[str] = []
    handler_may_consume = trio.Event()
    results: dict[str, object] = {}

    def take(message: str | bytes) -> bool:
        assert isinstance(message, str)
        seen.append(message)
        return message != "stop"

    async def handler(socket: DirectWebSocket) -> None:
        results["first"] = await socket.receive()
        await handler_may_consume.wait()
        await socket.consume(take)
        results["after"] = await socket.receive()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            functools.partial(
                serve, server_stream, client.upgrade_request(), handler, max_message_bytes=1 << 20, ping_interval=None
            )
        )
        await client.read_acceptance()
        # Read by the server before the handler consumes: these wait in the queue.
        await client.send("first", "queued-1", "queued-2")
        await trio.testing.wait_all_tasks_blocked()
        handler_may_consume.set()
        await trio.testing.wait_all_tasks_blocked()
        assert seen == ["queued-1", "queued-2"]
        # Read while the handler consumes: handed straight to the taker, which stops at "stop".
        await client.send("live", "stop", "for-receive")
        await trio.testing.wait_all_tasks_blocked()
        assert seen == ["queued-1", "queued-2", "live", "stop"]
        assert results == {"first": "first", "after": "for-receive"}
        nursery.cancel_scope.cancel()
