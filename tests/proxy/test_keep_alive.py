"""Kept-alive connections, on a port Hypercorn serves (management, with `proxy/keep_alive.py`)
and on the inference port (our own server, `transport/http_server.py`): they go on after a
response, time out when idle, end when the client ends them, and end with a response sent
before the request's body arrived."""

from __future__ import annotations

import httpx
import pytest
import trio

import paddler_trio.nursery.balancer as balancer_nursery
from tests.proxy.balancer_harness import BalancerUnderTest, running_balancer


async def read_until_closed(stream: trio.SocketStream) -> bytes:
    received = b""
    while chunk := await stream.receive_some():
        received += chunk
    return received


PORTS = ["management", "inference"]
# Answered with 200 and a body that ends with `}` on each port.
JSON_ROUTES = {"management": b"/api/v1/buffered_requests", "inference": b"/openapi.json"}
TIMEOUTS = {"management": "HYPERCORN_KEEP_ALIVE_TIMEOUT", "inference": "KEEP_ALIVE_TIMEOUT"}


async def open_port(balancer: BalancerUnderTest, port_name: str) -> trio.SocketStream:
    host, port = getattr(balancer.addresses, port_name).rsplit(":", 1)
    return await trio.open_tcp_stream(host, int(port))


async def read_json_answer(stream: trio.SocketStream, port_name: str) -> bytes:
    await stream.send_all(b"GET %b HTTP/1.1\r\nHost: x\r\n\r\n" % JSON_ROUTES[port_name])
    answer = b""
    with trio.fail_after(5):
        while not answer.endswith(b"}"):
            answer += await stream.receive_some()
    return answer


@pytest.mark.parametrize("port_name", PORTS)
async def test_an_idle_connection_is_closed_after_the_keep_alive_timeout(monkeypatch: pytest.MonkeyPatch, port_name: str) -> None:
    monkeypatch.setattr(balancer_nursery, TIMEOUTS[port_name], 1.0)
    async with running_balancer() as balancer:
        stream = await open_port(balancer, port_name)
        answer = await read_json_answer(stream, port_name)
        with trio.fail_after(5):
            answer += await read_until_closed(stream)
        assert answer.startswith(b"HTTP/1.1 200")
        assert b"connection: close" not in answer.lower()


async def test_a_connection_the_client_ends_is_closed_at_once_on_the_inference_port() -> None:
    async with running_balancer() as balancer:
        stream = await open_port(balancer, "inference")
        await read_json_answer(stream, "inference")
        await trio.sleep(0.3)  # the connection is idle, waiting for the next request
        await stream.send_eof()
        with trio.fail_after(1):
            assert await read_until_closed(stream) == b""


async def test_a_connection_the_client_ends_is_closed_by_the_keep_alive_timeout_on_hypercorn_ports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Hypercorn 0.18 closes it only when its idle timer ends: HYPERCORN_KEEP_ALIVE_TIMEOUT bounds that."""
    monkeypatch.setattr(balancer_nursery, "HYPERCORN_KEEP_ALIVE_TIMEOUT", 1.0)
    async with running_balancer() as balancer:
        stream = await open_port(balancer, "management")
        await read_json_answer(stream, "management")
        await stream.send_eof()
        with trio.fail_after(3):
            assert await read_until_closed(stream) == b""


@pytest.mark.parametrize("port_name", PORTS)
async def test_a_response_sent_before_the_body_arrived_closes_the_connection_and_says_so(port_name: str) -> None:
    async with running_balancer() as balancer:
        body = b'{"padding": "' + b"x" * 2000 + b'"}'
        stream = await open_port(balancer, port_name)
        await stream.send_all(
            f"PUT /not-a-paddler-route HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        )
        answer = b""
        with trio.fail_after(5):
            while b"\r\n\r\n" not in answer:
                answer += await stream.receive_some()
            await stream.send_all(body)  # too late: the 404 is out
            answer += await read_until_closed(stream)
        assert answer.startswith(b"HTTP/1.1 404")
        assert b"\r\nconnection: close\r\n" in answer.lower()


@pytest.mark.parametrize("port_name", PORTS)
async def test_a_client_reusing_its_connections_gets_every_answer(port_name: str) -> None:
    """httpx keeps connections in a pool; a 404 to a PUT must not leave one that never answers."""
    async with running_balancer() as balancer:
        body = b'{"padding": "' + b"x" * 2000 + b'"}'
        address = getattr(balancer.addresses, port_name)
        async with httpx.AsyncClient(timeout=5) as http:
            for _ in range(5):
                missing = await http.put(f"http://{address}/not-a-paddler-route", content=body)
                assert missing.status_code == 404
                listed = await http.get(f"http://{address}{JSON_ROUTES[port_name].decode()}")
                assert listed.status_code == 200


@pytest.mark.parametrize("port_name", PORTS)
async def test_a_kept_alive_connection_serves_the_next_request(port_name: str) -> None:
    async with running_balancer() as balancer:
        stream = await open_port(balancer, port_name)
        request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
        answers = b""
        with trio.fail_after(5):
            for expected in (1, 2):
                await stream.send_all(request)
                while answers.count(b"OK") < expected:
                    answers += await stream.receive_some()
        assert answers.count(b"HTTP/1.1 200") == 2
