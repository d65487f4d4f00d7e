"""The inference port's front (proxy/connection_front.py): inference-socket upgrades are served
by our own WebSocket, everything else by Hypercorn as before. Raw h11 and wsproto clients on a
real balancer, so that what goes over the wire is what is checked."""

from __future__ import annotations

import json
import os
from typing import Any

import h11
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Ping, Pong, Request, TextMessage

from paddler_trio.nursery.balancer import WEBSOCKET_PING_INTERVAL
from tests.proxy.balancer_harness import running_balancer

SOCKET_PATH = "/api/v1/inference_socket"


class RawClient:
    """One TCP connection to the balancer's inference port, read and written by hand."""

    def __init__(self, stream: trio.SocketStream, host: str) -> None:
        self.stream = stream
        self.host = host
        self.websocket = WSConnection(ConnectionType.CLIENT)

    @classmethod
    async def connect(cls, address: str) -> RawClient:
        host, _, port = address.rpartition(":")
        return cls(await trio.open_tcp_stream(host, int(port)), address)

    def upgrade_request(self) -> bytes:
        return self.websocket.send(Request(host=self.host, target=SOCKET_PATH))

    async def events(self) -> Any:
        """The next WebSocket events (waits for data when none is pending)."""
        with trio.fail_after(WEBSOCKET_PING_INTERVAL + 3):
            while True:
                events = list(self.websocket.events())
                if events:
                    return events
                self.websocket.receive_data(await self.stream.receive_some(65536))

    async def next_message(self) -> dict[str, Any]:
        with trio.fail_after(5):  # the server's pings alone never end the wait
            while True:
                for event in await self.events():
                    if isinstance(event, TextMessage):
                        return json.loads(event.data)

    async def send_text(self, text: str) -> None:
        await self.stream.send_all(self.websocket.send(TextMessage(data=text)))


def masked_text_frame(text: str) -> bytes:
    """A client's text frame (RFC 6455 5.2), built by hand: a client's WSConnection cannot frame
    a message before the server has accepted the upgrade."""
    payload = text.encode()
    assert len(payload) < 126
    mask = os.urandom(4)
    return bytes([0x81, 0x80 | len(payload)]) + mask + bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))


def invalid_message_description(message: dict[str, Any]) -> str:
    assert message["Error"]["error"]["code"] == 400, message
    return message["Error"]["error"]["description"]


async def test_a_message_sent_together_with_the_upgrade_is_answered() -> None:
    async with running_balancer() as balancer:
        client = await RawClient.connect(balancer.addresses.inference)
        await client.stream.send_all(client.upgrade_request() + masked_text_frame("not json"))
        events = await client.events()
        assert isinstance(events[0], AcceptConnection)
        message = await client.next_message()
        assert invalid_message_description(message).startswith("Invalid message: invalid JSON")


async def test_the_socket_answers_pings_and_pings_an_idle_client() -> None:
    async with running_balancer() as balancer:
        client = await RawClient.connect(balancer.addresses.inference)
        await client.stream.send_all(client.upgrade_request())
        assert isinstance((await client.events())[0], AcceptConnection)
        await client.stream.send_all(client.websocket.send(Ping(payload=b"are you there")))
        seen: list[Any] = []
        with trio.fail_after(WEBSOCKET_PING_INTERVAL + 3):
            while not any(isinstance(event, Ping) for event in seen):
                seen += await client.events()
        assert Pong(payload=b"are you there") in seen
        # The client's answer to the server's ping keeps the connection usable.
        await client.stream.send_all(client.websocket.send(next(e for e in seen if isinstance(e, Ping)).response()))
        await client.send_text("[]")
        assert invalid_message_description(await client.next_message()).startswith("Invalid message")


async def test_an_upgrade_after_an_http_request_on_the_same_connection_is_served_by_hypercorn() -> None:
    async with running_balancer() as balancer:
        client = await RawClient.connect(balancer.addresses.inference)
        http = h11.Connection(h11.CLIENT)
        await client.stream.send_all(
            http.send(h11.Request(method="GET", target="/health", headers=[("Host", client.host)]))
            + http.send(h11.EndOfMessage())
        )
        body = b""
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                http.receive_data(await client.stream.receive_some(65536))
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        assert body == b"OK"
        # The same connection, kept alive, now asks for the inference socket.
        await client.stream.send_all(client.upgrade_request())
        assert isinstance((await client.events())[0], AcceptConnection)
        await client.send_text("not json")
        assert invalid_message_description(await client.next_message()).startswith("Invalid message: invalid JSON")


async def test_requests_the_front_does_not_take_get_the_answers_they_got_before() -> None:
    async with running_balancer() as balancer:
        plain = await balancer.http.get(f"{balancer.inference}{SOCKET_PATH}")
        assert plain.status_code == 400
        missing_key = await balancer.http.get(
            f"{balancer.inference}{SOCKET_PATH}",
            headers={"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13"},
        )
        assert missing_key.status_code == 400
        assert (await balancer.http.get(f"{balancer.inference}/health")).text == "OK"
