"""Which WebSocket upgrades a port's front takes from Hypercorn (`connection_front.py`): those of
a route that a service serves on a `MessageSocket` (the inference socket, the agents' socket),
that Quart would accept as they are. They are served by a `DirectWebSocket`, whose writes carry
many messages each.

Anything else stays with Hypercorn and Quart, which answer it as before: other routes, a
malformed upgrade, and any upgrade that the API-key check must judge unless it carries an
accepted `Authorization: Bearer` key (refusals, and keys given as a subprotocol or a query
parameter, are handled in one place, `security/api_keys.py`).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable, Callable, Mapping

import h11
import trio

from paddler_trio.proxy.connection_front import (
    ConnectionHandler,
    Takeover,
    authorization_of,
)
from paddler_trio.proxy.message_socket import MessageSocket
from paddler_trio.security.api_keys import ApiKeys
from paddler_trio.transport import direct_websocket

WEBSOCKET_VERSION = b"13"

# Serves one accepted socket to its end.
SocketHandler = Callable[[MessageSocket], Awaitable[None]]
# Given a request path (percent-decoded), the handler of the socket route it names, or None.
SocketRoute = Callable[[str], SocketHandler | None]


def websocket_takeover(
    route: SocketRoute,
    *,
    keys: ApiKeys,
    max_message_bytes: int,
    ping_interval: float | None,
    accept_headers: Mapping[str, str] | None = None,
) -> Takeover:
    def takeover(request: h11.Request) -> ConnectionHandler | None:
        if request.method != b"GET":
            return None
        handler = route(urllib.parse.unquote(request.target.partition(b"?")[0].decode("latin-1")))
        if handler is None:
            return None
        headers = {name: value for name, value in request.headers}  # h11 lowercases the names
        if not _is_websocket_upgrade(headers) or not keys.admits(authorization_of(headers)):
            return None

        async def serve(stream: trio.abc.Stream, received: bytes) -> None:  # the socket ends its connection
            await direct_websocket.serve(
                stream,
                received,
                handler,
                max_message_bytes=max_message_bytes,
                ping_interval=ping_interval,
                accept_headers=accept_headers,
            )

        return serve

    return takeover


def _is_websocket_upgrade(headers: dict[bytes, bytes]) -> bool:
    connection_tokens = {token.strip().lower() for token in headers.get(b"connection", b"").split(b",")}
    return (
        headers.get(b"upgrade", b"").strip().lower() == b"websocket"
        and b"upgrade" in connection_tokens
        and headers.get(b"sec-websocket-version", b"").strip() == WEBSOCKET_VERSION
        and bool(headers.get(b"sec-websocket-key"))
        and b"host" in headers
    )
