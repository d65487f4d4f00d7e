"""Kept-alive connections of the routes Hypercorn serves (`paddler_trio/proxy/keep_alive.py`):
they go on after a response, time out when idle, end as soon as the client ends them, and end
with a response sent before the request's body arrived."""

from __future__ import annotations

import httpx
import pytest
import trio

import paddler_trio.nursery.balancer as balancer_nursery
from tests.proxy.balancer_harness import running_balancer


async def read_until_closed(stream: trio.SocketStream) -> bytes:
    received = b""
    while chunk := await stream.receive_some():
        received += chunk
    return received


async def test_an_idle_connection_is_closed_after_the_keep_alive_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(balancer_nursery, "KEEP_ALIVE_TIMEOUT", 1.0)
    async with running_balancer() as balancer:
        host, port = balancer.addresses.management.rsplit(":", 1)
        stream = await trio.open_tcp_stream(host, int(port))
        await stream.send_all(b"GET /api/v1/buffered_requests HTTP/1.1\r\nHost: x\r\n\r\n")
        with trio.fail_after(5):
            answer = await read_until_closed(stream)
        assert answer.startswith(b"HTTP/1.1 200")
        assert b"connection: close" not in answer.lower()


async def test_a_connection_the_client_ends_is_closed_at_once_not_after_the_keep_alive_timeout() -> None:
    async with running_balancer() as balancer:
        host, port = balancer.addresses.management.rsplit(":", 1)
        stream = await trio.open_tcp_stream(host, int(port))
        await stream.send_all(b"GET /api/v1/buffered_requests HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        with trio.fail_after(5):
            while not answer.endswith(b"}"):
                answer += await stream.receive_some()
        await trio.sleep(0.3)  # the connection is idle, its idle timer running
        await stream.send_eof()
        with trio.fail_after(5):
            assert await read_until_closed(stream) == b""


async def test_a_response_sent_before_the_body_arrived_closes_the_connection_and_says_so() -> None:
    async with running_balancer() as balancer:
        host, port = balancer.addresses.management.rsplit(":", 1)
        body = b'{"padding": "' + b"x" * 2000 + b'"}'
        stream = await trio.open_tcp_stream(host, int(port))
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


async def test_a_client_reusing_its_connections_gets_every_answer() -> None:
    """httpx keeps connections in a pool; a 404 to a PUT must not leave one that never answers."""
    async with running_balancer() as balancer:
        body = b'{"padding": "' + b"x" * 2000 + b'"}'
        async with httpx.AsyncClient(timeout=5) as http:
            for _ in range(5):
                missing = await http.put(f"http://{balancer.addresses.management}/not-a-paddler-route", content=body)
                assert missing.status_code == 404
                listed = await http.get(f"http://{balancer.addresses.management}/api/v1/buffered_requests")
                assert listed.status_code == 200


async def test_a_kept_alive_connection_serves_the_next_request() -> None:
    async with running_balancer() as balancer:
        host, port = balancer.addresses.management.rsplit(":", 1)
        stream = await trio.open_tcp_stream(host, int(port))
        request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
        answers = b""
        with trio.fail_after(5):
            for expected in (1, 2):
                await stream.send_all(request)
                while answers.count(b"OK") < expected:
                    answers += await stream.receive_some()
        assert answers.count(b"HTTP/1.1 200") == 2
