"""The two ends of a test's WebSocket: the server side reads the client's upgrade request
before handing it to `direct_websocket.serve`, and the client side opens with `connect`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import trio

from paddler_trio.transport.direct_websocket import DirectWebSocket, connect

MAX_MESSAGE_BYTES = 1 << 20


async def read_upgrade_request(stream: trio.abc.Stream) -> bytes:
    """The client's upgrade request, head and all (and whatever came with it)."""
    request = b""
    while b"\r\n\r\n" not in request:
        request += await stream.receive_some(65536)
    return request


async def connect_client(
    stream: trio.abc.Stream,
    handler: Callable[[DirectWebSocket], Awaitable[None]],
    *,
    target: str = "/api/v1/agent_socket/a-1",
    extra_headers: Mapping[str, str] | None = None,
    handshake_timeout: float = 5,
) -> None:
    """`connect` as the agent does, to `target` on a test host."""
    await connect(
        stream,
        handler,
        host="balancer:8085",
        target=target,
        extra_headers=extra_headers or {},
        max_message_bytes=MAX_MESSAGE_BYTES,
        handshake_timeout=handshake_timeout,
    )


async def never_called(socket: DirectWebSocket) -> None:
    raise AssertionError("the handler must not run: the handshake should have failed")
