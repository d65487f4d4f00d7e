"""The inference port's own HTTP/1.1 server (`transport/http_server.py`, `server_websocket.py`,
`proxy/inference_routes.py`): WebSocket pings, fragments, protocol errors, keep-alive and
pipelining, clients that leave, shutdown. Raw h11 and wsproto clients on a real balancer (or on
the server alone), so that what goes over the wire is what is checked."""

from __future__ import annotations

import functools
import json
import os
import socket
import struct
from typing import Any

import h11
import httpx
import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    Pong,
    Request,
    TextMessage,
)

from paddler_trio.nursery.balancer import WEBSOCKET_PING_INTERVAL
from paddler_trio.proxy import forwarding
from paddler_trio.transport.http_server import Exchange, ServerSettings, serve_http
from tests.proxy.balancer_harness import (
    BalancerUnderTest,
    content_of,
    running_balancer,
    wait_until,
)

SOCKET_PATH = "/api/v1/inference_socket"
RAW_PROMPT_PATH = "/api/v1/continue_from_raw_prompt"


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


async def send_post(client: RawClient, http: h11.Connection, body: bytes, *extra_headers: tuple[str, str]) -> None:
    """POST `body` to the raw-prompt route."""
    headers = [("Host", client.host), ("Content-Type", "application/json"), ("Content-Length", str(len(body))), *extra_headers]
    request = h11.Request(method="POST", target=RAW_PROMPT_PATH, headers=headers)
    await client.stream.send_all(http.send(request) + http.send(h11.Data(data=body)) + http.send(h11.EndOfMessage()))


async def read_response(client: RawClient, http: h11.Connection) -> tuple[h11.Response, bytes]:
    """The next whole HTTP response on the client's connection, and its body."""
    response: h11.Response | None = None
    body = b""
    with trio.fail_after(10):
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                http.receive_data(await client.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                http.start_next_cycle()
                return response, body


def ndjson_lines(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in body.decode().splitlines() if line.strip()]


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


async def test_a_message_in_fragments_with_a_ping_between_them_is_read_as_one_message() -> None:
    async with running_balancer() as balancer:
        client = await RawClient.connect(balancer.addresses.inference)
        await client.stream.send_all(client.upgrade_request())
        assert isinstance((await client.events())[0], AcceptConnection)
        await client.stream.send_all(
            client.websocket.send(TextMessage(data="not ", message_finished=False))
            + client.websocket.send(Ping(payload=b"between"))
            + client.websocket.send(TextMessage(data="json", message_finished=True))
        )
        seen: list[Any] = []
        with trio.fail_after(5):
            while not any(isinstance(event, TextMessage) for event in seen):
                seen += await client.events()
        assert Pong(payload=b"between") in seen
        message = json.loads(next(event for event in seen if isinstance(event, TextMessage)).data)
        # One message "not json", not two: the balancer answers its invalid JSON once.
        assert invalid_message_description(message).startswith("Invalid message: invalid JSON")


@pytest.mark.parametrize(
    ("frame", "close_code"),
    [
        # Text that is not UTF-8: 1007 (invalid frame payload data).
        (bytes([0x81, 0x82]) + bytes(4) + b"\xff\xfe", 1007),
        # A client's frame without a mask: 1002 (protocol error).
        (bytes([0x81, 0x02]) + b"{}", 1002),
    ],
)
async def test_a_frame_breaking_the_protocol_closes_the_socket_with_its_code(frame: bytes, close_code: int) -> None:
    async with running_balancer() as balancer:
        client = await RawClient.connect(balancer.addresses.inference)
        await client.stream.send_all(client.upgrade_request())
        assert isinstance((await client.events())[0], AcceptConnection)
        await client.stream.send_all(frame)
        seen: list[Any] = []
        with trio.fail_after(5):
            while not any(isinstance(event, CloseConnection) for event in seen):
                seen += await client.events()
        assert next(event for event in seen if isinstance(event, CloseConnection)).code == close_code


async def test_an_upgrade_after_an_http_request_on_the_same_connection_is_accepted() -> None:
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


async def test_a_plain_request_to_the_socket_route_is_a_400() -> None:
    async with running_balancer() as balancer:
        plain = await balancer.http.get(f"{balancer.inference}{SOCKET_PATH}")
        assert plain.status_code == 400
        missing_key = await balancer.http.get(
            f"{balancer.inference}{SOCKET_PATH}",
            headers={"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13"},
        )
        assert missing_key.status_code == 400
        assert (await balancer.http.get(f"{balancer.inference}/health")).text == "OK"


async def test_a_client_that_vanishes_mid_stream_frees_its_slot_and_the_service_goes_on() -> None:
    async with running_balancer() as balancer:
        await balancer.add_agent(slots=1, tokens=tuple("abcdefghijklmnopqrstuvwxyz" * 20), token_delay=0.002)
        client = await RawClient.connect(balancer.addresses.inference)
        await client.stream.send_all(client.upgrade_request())
        assert isinstance((await client.events())[0], AcceptConnection)
        request = {"ContinueFromRawPrompt": {"raw_prompt": "Hi", "max_tokens": 500}}
        await client.send_text(json.dumps({"Request": {"id": "r1", "request": request}}))
        assert "Response" in await client.next_message()
        # Reset the connection (SO_LINGER 0) while tokens are still being written to it.
        client.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.stream.socket.close()
        await wait_until(lambda: balancer_idle(balancer))
        messages = await balancer.raw_prompt("still there?", max_tokens=3)
        assert "Done" in json.dumps(messages[-1])


async def balancer_idle(balancer: BalancerUnderTest) -> bool:
    return await balancer.slots_processing() == 0


async def serving(nursery: trio.Nursery, route: Any, *, graceful_timeout: float = 1.0) -> tuple[str, trio.Event]:
    """`route` on the server alone, on a free port; set the event to shut it down."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    settings = ServerSettings(
        max_body_bytes=1024,
        keep_alive_timeout=60,
        graceful_timeout=graceful_timeout,
        websocket_max_message_bytes=1024,
        websocket_ping_interval=None,
    )
    shutdown = trio.Event()
    nursery.start_soon(functools.partial(serve_http, route, list(listeners), settings, shutdown=shutdown.wait))
    host, port = listeners[0].socket.getsockname()[:2]
    return f"{host}:{port}", shutdown


async def test_a_failing_route_answers_500_and_ends_only_its_own_connection(nursery: trio.Nursery) -> None:
    async def route(exchange: Exchange) -> None:
        if exchange.request.path == "/fails":
            raise RuntimeError("a route bug")
        await exchange.respond(200, b"OK")

    address, shutdown = await serving(nursery, route)
    client = await RawClient.connect(address)
    await client.stream.send_all(b"GET /fails HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = b""
    with trio.fail_after(5):
        while chunk := await client.stream.receive_some(100):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 500") and b"connection: close" in answer.lower()
    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://{address}/health")
    assert (response.status_code, response.text) == (200, "OK")
    shutdown.set()


async def test_pipelined_requests_are_answered_in_order() -> None:
    async with running_balancer() as balancer:
        await balancer.add_agent(slots=1, tokens=("a", "b"))
        client = await RawClient.connect(balancer.addresses.inference)
        wire = b""
        for prompt in ("first", "second"):
            body = json.dumps({"raw_prompt": prompt, "max_tokens": 2}).encode()
            wire += f"POST {RAW_PROMPT_PATH} HTTP/1.1\r\nHost: {client.host}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            wire += body
        wire += f"GET /health HTTP/1.1\r\nHost: {client.host}\r\n\r\n".encode()
        # All three requests in one write (h11 will not frame a request before the previous answer).
        await client.stream.send_all(wire)
        reader = h11.Connection(h11.CLIENT)
        answers = []
        for _ in range(3):
            # Only to put the reader in the state of one waiting for an answer; these bytes are not sent.
            reader.send(h11.Request(method="GET", target="/", headers=[("Host", client.host)]))
            reader.send(h11.EndOfMessage())
            answers.append(await read_response(client, reader))
        assert [response.status_code for response, _ in answers] == [200, 200, 200]
        first, second, health = (body for _, body in answers)
        assert content_of(ndjson_lines(first)) == content_of(ndjson_lines(second)) == "ab"
        assert ndjson_lines(first)[0]["Response"]["request_id"] != ndjson_lines(second)[0]["Response"]["request_id"]
        assert health == b"OK"


async def test_a_generation_request_the_route_refuses_gets_its_answer_and_the_connection_goes_on() -> None:
    async with running_balancer(max_tokens_limit=100) as balancer:
        await balancer.add_agent(slots=1, tokens=("ok",))
        client = await RawClient.connect(balancer.addresses.inference)
        http = h11.Connection(h11.CLIENT)
        refused = {
            b'{"raw_prompt": "Hi"': "Invalid request body",
            b'{"raw_prompt": "Hi", "max_tokens": 5, "surprise": 1}': "Invalid request body",
            b'{"raw_prompt": "Hi", "max_tokens": 500}': "beyond this balancer's limit of 100",
        }
        for body, description in refused.items():
            await send_post(client, http, body)
            response, answer = await read_response(client, http)
            assert response.status_code == 400
            assert description in answer.decode()  # plain text from the route, JSON from the limit
        good = json.dumps({"raw_prompt": "Hi", "max_tokens": 1}).encode()
        await send_post(client, http, good)
        response, answer = await read_response(client, http)
        assert (response.status_code, content_of(ndjson_lines(answer))) == (200, "ok")


async def test_a_client_that_half_closes_while_its_request_is_buffered_leaves_the_buffer() -> None:
    async with running_balancer(buffered_request_timeout=30.0) as balancer:
        client = await RawClient.connect(balancer.addresses.inference)
        http = h11.Connection(h11.CLIENT)
        body = json.dumps({"raw_prompt": "Hi", "max_tokens": 5}).encode()
        await send_post(client, http, body)
        await wait_until(lambda: balancer_buffered(balancer, 1))
        await client.stream.send_eof()
        await wait_until(lambda: balancer_buffered(balancer, 0))


async def balancer_buffered(balancer: BalancerUnderTest, expected: int) -> bool:
    return await balancer.buffered() == expected


async def test_a_kept_alive_connection_left_idle_is_closed_when_the_server_shuts_down(nursery: trio.Nursery) -> None:
    async def route(exchange: Exchange) -> None:
        await exchange.respond(204)

    # A graceful timeout far longer than the test waits: an idle connection must not sit it out.
    address, shutdown = await serving(nursery, route, graceful_timeout=60)
    client = await RawClient.connect(address)
    await client.stream.send_all(b"GET /any HTTP/1.1\r\nHost: x\r\n\r\n")
    with trio.fail_after(5):
        assert (await client.stream.receive_some(100)).startswith(b"HTTP/1.1 204")
    shutdown.set()
    with trio.fail_after(5):
        assert await client.stream.receive_some(100) == b""


async def test_tokens_of_a_paced_stream_go_to_the_client_straight_from_the_agent_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Tokens that come slower than the gather interval skip the relay task on both transports
    (the agent socket's reader puts them in the client's queue: `_Relay.take`), and still arrive
    whole and in order."""
    taken_at_once: list[Any] = []
    take = forwarding._Relay.take

    def counting_take(relay: forwarding._Relay, reply: Any) -> bool:
        taken = take(relay, reply)
        if taken:
            taken_at_once.append(reply)
        return taken

    monkeypatch.setattr(forwarding._Relay, "take", counting_take)
    tokens = tuple("abcdef")
    async with running_balancer() as balancer:
        await balancer.add_agent(slots=2, tokens=tokens, token_delay=0.03)

        client = await RawClient.connect(balancer.addresses.inference)
        http = h11.Connection(h11.CLIENT)
        await send_post(client, http, json.dumps({"raw_prompt": "Hi", "max_tokens": 10}).encode())
        response, body = await read_response(client, http)
        assert response.status_code == 200
        assert content_of(ndjson_lines(body)) == "abcdef"
        ndjson_at_once = len(taken_at_once)

        socket_client = await RawClient.connect(balancer.addresses.inference)
        await socket_client.stream.send_all(socket_client.upgrade_request())
        assert isinstance((await socket_client.events())[0], AcceptConnection)
        request = {"ContinueFromRawPrompt": {"raw_prompt": "Hi", "max_tokens": 10}}
        await socket_client.send_text(json.dumps({"Request": {"id": "r1", "request": request}}))
        messages = [await socket_client.next_message() for _ in range(len(tokens) + 1)]
        assert content_of(messages) == "abcdef"
        assert "Done" in json.dumps(messages[-1])

    # Unless the machine stalls for a whole token interval, every token goes at once.
    assert ndjson_at_once >= len(tokens) - 1
    assert len(taken_at_once) - ndjson_at_once >= len(tokens) - 1
