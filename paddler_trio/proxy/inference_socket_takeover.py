"""Which connections the inference port's front takes from Hypercorn: WebSocket upgrades of
`/api/v1/inference_socket` that Quart would accept as they are. Those are served by a
`DirectWebSocket` (its writes carry many token messages each).

Anything else stays with Hypercorn and Quart, which answer it as before: other routes, a
malformed upgrade, and any upgrade that the API-key check must judge unless it carries an
accepted `Authorization: Bearer` key (refusals, and keys given as a subprotocol or a query
parameter, are handled in one place, `security/api_keys.py`).
"""

from __future__ import annotations

from collections.abc import Callable

import h11
import trio

from paddler_trio.proxy import direct_websocket
from paddler_trio.proxy.connection_front import (
    ConnectionHandler,
    Takeover,
    authorization_of,
)
from paddler_trio.proxy.inference_socket import InferenceSocketSession, MessageSocket
from paddler_trio.security.api_keys import ApiKeys

INFERENCE_SOCKET_PATH = b"/api/v1/inference_socket"
WEBSOCKET_VERSION = b"13"


def inference_socket_takeover(
    session_for: Callable[[MessageSocket], InferenceSocketSession],
    *,
    keys: ApiKeys,
    max_message_bytes: int,
    ping_interval: float | None,
) -> Takeover:
    async def serve(stream: trio.abc.Stream, received: bytes) -> None:  # the socket ends its connection
        await direct_websocket.serve(
            stream,
            received,
            lambda socket: session_for(socket).serve(),
            max_message_bytes=max_message_bytes,
            ping_interval=ping_interval,
        )

    def takeover(request: h11.Request) -> ConnectionHandler | None:
        if request.method != b"GET" or request.target.partition(b"?")[0] != INFERENCE_SOCKET_PATH:
            return None
        headers = {name: value for name, value in request.headers}  # h11 lowercases the names
        if not _is_websocket_upgrade(headers):
            return None
        if not keys.admits(authorization_of(headers)):
            return None
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
