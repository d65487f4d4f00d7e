"""`DirectWebSocket`: `consume` hands messages to a taker, in order with those queued for
`receive` before it, until the taker says stop (the agent socket reads this way); `connect`
opens the client side (the agent's link), and a refused or unanswered upgrade fails clearly."""

from __future__ import annotations

import functools

import pytest
import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from paddler_trio.transport.direct_websocket import (
    DirectWebSocket,
    WebSocketHandshakeFailed,
    WebSocketRefused,
    serve,
)
from tests.transport.tcp_pair import tcp_pair
from tests.transport.websocket_peers import (
    connect_client,
    never_called,
    read_upgrade_request,
)


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


async def test_a_takers_stream_error_is_raised_as_a_failure_not_taken_for_this_connections_end() -> None:
    server_stream, client_stream = trio.testing.memory_stream_pair()
    client = _Client(client_stream)

    def take(message: str | bytes) -> bool:
        raise trio.ClosedResourceError("another client's stream")

    async def handler(socket: DirectWebSocket) -> None:
        await socket.consume(take)

    with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="taker failed"), flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                functools.partial(
                    serve, server_stream, client.upgrade_request(), handler, max_message_bytes=1 << 20, ping_interval=None
                )
            )
            await client.read_acceptance()
            await client.send("a token")


async def test_once_the_client_has_closed_nothing_is_written_at_once_and_a_send_says_the_socket_is_closed() -> None:
    """The agent socket's reader hands tokens to client sockets at once (`proxy/forwarding.py`):
    a client that has just closed must make that hand-off decline, never raise into the reader
    (which would end the agent's connection)."""
    seen: dict[str, object] = {}

    async def handler(socket: DirectWebSocket) -> None:
        try:
            await trio.sleep_forever()
        finally:  # cancelled by the reader, which has just answered the client's close
            seen["can_send_now"] = socket.can_send_now()
            seen["sent_now"] = socket.send_text_now("a token after the close")
            try:
                await socket.send_texts(["a message after the close"])
            except trio.ClosedResourceError:
                seen["send"] = "closed"

    async with tcp_pair() as (server_stream, client_stream):
        client = _Client(client_stream)
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    functools.partial(
                        serve, server_stream, client.upgrade_request(), handler, max_message_bytes=1 << 20, ping_interval=None
                    )
                )
                await client.read_acceptance()
                await client_stream.send_all(client.connection.send(CloseConnection(code=1000)))
    assert seen == {"can_send_now": False, "sent_now": False, "send": "closed"}


async def test_a_client_socket_opens_exchanges_messages_both_ways_and_closes() -> None:
    server_stream, client_stream = trio.testing.memory_stream_pair()
    seen_by_server: list[str | bytes] = []
    seen_by_client: dict[str, object] = {}

    async def server_handler(socket: DirectWebSocket) -> None:
        seen_by_server.append(await socket.receive())
        await socket.send_texts(["pong-1", "pong-2"])
        seen_by_server.append(await socket.receive())

    async def run_server() -> None:
        request = await read_upgrade_request(server_stream)
        seen_by_server.append(request.split(b"\r\n\r\n")[0])
        await serve(
            server_stream,
            request,
            server_handler,
            max_message_bytes=1 << 20,
            ping_interval=None,
            accept_headers={"x-offer": "yes"},
        )

    async def client_handler(socket: DirectWebSocket) -> None:
        seen_by_client["headers"] = socket.handshake_headers
        await socket.send_texts(["ping"])
        seen_by_client["replies"] = [await socket.receive(), await socket.receive()]
        await socket.send_texts(["bye"])
        await socket.close(1000, "")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_server)
        with trio.fail_after(5):
            await connect_client(client_stream, client_handler, extra_headers={"Authorization": "Bearer s3cret"})
    head, first, last = seen_by_server
    assert isinstance(head, bytes)
    assert head.startswith(b"GET /api/v1/agent_socket/a-1 HTTP/1.1")
    assert b"authorization: bearer s3cret" in head.lower()
    assert (first, last) == ("ping", "bye")
    assert seen_by_client["replies"] == ["pong-1", "pong-2"]
    assert (b"x-offer", b"yes") in seen_by_client["headers"]  # type: ignore[operator]


async def test_a_client_socket_refused_with_an_http_status_raises_it() -> None:
    server_stream, client_stream = trio.testing.memory_stream_pair()

    async def refuse() -> None:
        await read_upgrade_request(server_stream)
        await server_stream.send_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(refuse)
        with pytest.raises(WebSocketRefused) as refused:
            await connect_client(client_stream, never_called)
    assert refused.value.status_code == 401


@pytest.mark.parametrize("server_closes", [True, False], ids=["closes", "never-answers"])
async def test_a_client_socket_whose_server_does_not_answer_the_upgrade_fails_clearly(
    server_closes: bool, autojump_clock: trio.testing.MockClock
) -> None:
    server_stream, client_stream = trio.testing.memory_stream_pair()

    async def misbehave() -> None:
        await read_upgrade_request(server_stream)
        if server_closes:
            await server_stream.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(misbehave)
        with pytest.raises(WebSocketHandshakeFailed, match="closed the connection" if server_closes else "within 3 s"):
            await connect_client(client_stream, never_called, handshake_timeout=3)
