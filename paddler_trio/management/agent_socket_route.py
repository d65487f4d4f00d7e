"""The agents' socket route, `/api/v1/agent_socket/{agent_id}`, served from the management
port's ASGI interface ahead of Quart (`with_agent_sockets` wraps the app's `asgi_app`, as
Quart's docs suggest for middleware); every other request goes on to Quart.

Why not a Quart route: every frame of an agent (one per token from a Paddler agent) would take
one more task hop and queue through Quart's WebSocket on its way from Hypercorn. Here the
socket's reader takes Hypercorn's ASGI messages itself (`AsgiMessageSocket`).

The key is the agent secret, taken as on every WebSocket of the balancer (`security/api_keys.py`):
an `Authorization: Bearer` header, a `bearer.<key>` subprotocol or an `api_key` query parameter.
A refused upgrade gets the HTTP 401 with the native error body before the socket is accepted.
The upgrade request tells whether the agent takes our request extensions (`protocol.request_extensions`).
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import trio
from quart_trio import QuartTrio

from paddler_trio.management.agent_socket import AGENT_SOCKET_PATH_PREFIX, AgentSocket
from paddler_trio.protocol.request_extensions import REQUEST_EXTENSIONS_HEADER, accepts_request_extensions
from paddler_trio.security.api_keys import WEBSOCKET_QUERY_PARAMETER, ApiKeys, check_websocket_key
from paddler_trio.security.error_shapes import native_error_body
from paddler_trio.security.refusal_log import RefusalLog

_logger = logging.getLogger(__name__)

AsgiReceive = Callable[[], Any]
AsgiSend = Callable[[dict[str, Any]], Any]


def with_agent_sockets(app: QuartTrio, agent_socket: AgentSocket, keys: ApiKeys, accept_headers: Mapping[str, str]) -> QuartTrio:
    asgi_app = app.asgi_app
    refusals = RefusalLog(_logger)

    async def serve(scope: dict[str, Any], receive: AsgiReceive, send: AsgiSend) -> None:
        agent_id = _agent_id_of(scope)
        if agent_id is None:
            await asgi_app(scope, receive, send)
            return
        await receive()  # websocket.connect
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
        check = check_websocket_key(
            keys, headers.get("authorization"), list(scope.get("subprotocols", [])), (query.get(WEBSOCKET_QUERY_PARAMETER) or [None])[0]
        )
        if check.refusal is not None:
            client = (scope.get("client") or ("unknown client",))[0]
            refusals.refused(client, check.refusal.reason, "management service refused %s: %s", scope["path"], check.refusal.reason)
            await _refuse(send, 401, native_error_body(check.refusal.description))
            return
        extensions = accepts_request_extensions(headers.get(REQUEST_EXTENSIONS_HEADER))
        with trio.CancelScope() as socket_scope:
            socket = AsgiMessageSocket(receive, send, socket_scope, accept_headers=accept_headers, subprotocol=check.subprotocol)
            await agent_socket.serve(socket, agent_id, accepts_request_extensions=extensions)

    app.asgi_app = serve  # type: ignore[method-assign]
    return app


def _agent_id_of(scope: dict[str, Any]) -> str | None:
    """The agent id of an upgrade to the agents' socket (ASGI paths are percent-decoded); None for anything else."""
    if scope["type"] != "websocket" or not scope["path"].startswith(AGENT_SOCKET_PATH_PREFIX):
        return None
    agent_id = scope["path"].removeprefix(AGENT_SOCKET_PATH_PREFIX)
    return agent_id if agent_id and "/" not in agent_id else None


async def _refuse(send: AsgiSend, status: int, body: str) -> None:
    headers = [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]
    await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body.encode()})


class AsgiMessageSocket:
    """An ASGI WebSocket as a `MessageSocket`. When the other end disconnects, the handler's
    scope is cancelled (as Quart cancels its WebSocket handlers)."""

    def __init__(
        self,
        receive: AsgiReceive,
        send: AsgiSend,
        handler_scope: trio.CancelScope,
        *,
        accept_headers: Mapping[str, str],
        subprotocol: str | None,
    ) -> None:
        self._receive = receive
        self._send = send
        self._handler_scope = handler_scope
        self._accept_headers = [(name.encode(), value.encode()) for name, value in accept_headers.items()]
        self._subprotocol = subprotocol

    async def accept(self) -> None:
        await self._send({"type": "websocket.accept", "headers": self._accept_headers, "subprotocol": self._subprotocol})

    async def receive(self) -> str | bytes:
        message = await self._receive()
        if message["type"] == "websocket.receive":
            text = message.get("text")
            return text if text is not None else message["bytes"]
        self._handler_scope.cancel()  # websocket.disconnect
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def consume(self, take: Callable[[str | bytes], bool]) -> None:
        while take(await self.receive()):
            pass

    async def send_texts(self, texts: Iterable[str]) -> None:
        for text in texts:
            await self._send({"type": "websocket.send", "text": text})

    async def close(self, code: int, reason: str | None = None) -> None:
        try:
            await self._send({"type": "websocket.close", "code": code, "reason": reason})
        except trio.BusyResourceError:
            # The agent closed the connection first: Hypercorn 0.18 ends its side (`send_eof`) outside
            # the lock its sends take, so the close frame can meet that. Nobody is left to read it.
            _logger.debug("the agent's connection was already closing: no close frame sent")
