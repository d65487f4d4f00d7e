"""A small HTTP/1.1 server on Trio, built the way Hypercorn is built: one sans-IO `h11.Connection`
per TCP (or TLS) connection, driven by that connection's task, and `wsproto` for the WebSocket
upgrades it accepts (`server_websocket.py`). The balancer's inference port runs on it
(`proxy/inference_port.py`); the other ports stay on Hypercorn and Quart.

Why not Hypercorn there: every token of a stream is one message, and through ASGI each costs a
trip through Quart's and Hypercorn's queues and tasks (about 80 µs on a small machine, so about
12,000 token messages per second for a whole balancer). Here the route writes to the connection
itself: one `send_all` per chunk, or per batch of WebSocket messages.

A route is one coroutine, `handle(exchange)`, run in a nursery of its own that the server opens
for the request and closes when the route returns: whatever the route starts lives no longer
than its request. Once a route has started a streamed response, the server watches the client
(its reads go on in that nursery): a client that closes or half-closes its side cancels the
route, as Hypercorn's `http.disconnect` does.

Connections are kept alive between requests for `keep_alive_timeout` (pipelined requests are
answered in order); a response sent before its request's body was read says
`Connection: close` and ends the connection. At shutdown the listeners close, idle connections
end at once, and requests in flight get `graceful_timeout` before they are cancelled.
"""

from __future__ import annotations

import functools
import logging
import urllib.parse
from http import HTTPStatus
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import attrs
import h11
import trio
import wsproto.connection
from wsproto import ConnectionType
from wsproto.utilities import generate_accept_token

from paddler_trio.transport.server_websocket import ServerWebSocket

_logger = logging.getLogger(__name__)

RECEIVE_SIZE = 65536
MAX_HEAD_BYTES = 16 * 1024
LINGER = 1.0

Headers = Iterable[tuple[str, str]]
Route = Callable[["Exchange"], Awaitable[None]]


class BodyTooLarge(Exception):
    """The request's body is larger than the server's limit (nothing of it is kept)."""


@attrs.frozen
class ServerSettings:
    max_body_bytes: int
    keep_alive_timeout: float
    graceful_timeout: float
    websocket_max_message_bytes: int
    websocket_ping_interval: float | None


@attrs.frozen
class HttpRequest:
    method: str
    target: str
    # Lowercase names; a header sent several times has its values joined with ", ".
    headers: Mapping[str, str]
    client: str

    @property
    def path(self) -> str:
        return urllib.parse.unquote(self.target.partition("?")[0])

    def query(self, name: str) -> str | None:
        values = urllib.parse.parse_qs(self.target.partition("?")[2]).get(name)
        return values[0] if values else None

    @property
    def is_websocket_upgrade(self) -> bool:
        connection_tokens = {token.strip().lower() for token in self.headers.get("connection", "").split(",")}
        return (
            self.method == "GET"
            and self.headers.get("upgrade", "").strip().lower() == "websocket"
            and "upgrade" in connection_tokens
            and self.headers.get("sec-websocket-version", "").strip() == "13"
            and bool(self.headers.get("sec-websocket-key"))
        )

    @property
    def websocket_subprotocols(self) -> list[str]:
        offered = self.headers.get("sec-websocket-protocol", "")
        return [protocol.strip() for protocol in offered.split(",") if protocol.strip()]


class Exchange:
    """One request and its answer, on its connection: a route reads the body (`read_body`) and
    answers with `respond`, with `start_stream`/`send_chunk`/`end_stream`, or by accepting a
    WebSocket upgrade (`accept_websocket`)."""

    def __init__(
        self,
        request: HttpRequest,
        connection: h11.Connection,
        stream: trio.abc.Stream,
        nursery: trio.Nursery,
        settings: ServerSettings,
    ) -> None:
        self.request = request
        self._connection = connection
        self._stream = stream
        self._nursery = nursery
        self._settings = settings
        self.answered = False
        self.upgraded = False
        self._closes_connection = False
        self._watching_client = False

    async def read_body(self) -> bytes:
        """The whole body; `BodyTooLarge` beyond the server's limit (a declared length over it is
        refused before any of it is read)."""
        limit = self._settings.max_body_bytes
        declared = self.request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge
        if self._connection.their_state is not h11.SEND_BODY:
            return b""  # a request without a body (its end was read with its head)
        if self._connection.they_are_waiting_for_100_continue:
            await self._send(h11.InformationalResponse(status_code=100, headers=[]))
        body = bytearray()
        while not isinstance(event := await _next_event(self._connection, self._stream), h11.EndOfMessage):
            if isinstance(event, h11.ConnectionClosed):
                raise trio.BrokenResourceError("the client left before its body was complete")
            assert isinstance(event, h11.Data)
            body += event.data
            if len(body) > limit:
                raise BodyTooLarge
        return bytes(body)

    async def respond(self, status: int, body: bytes = b"", headers: Headers = ()) -> None:
        await self._send_head(status, [*headers, ("content-length", str(len(body)))])
        await self._stream.send_all(self._connection.send(h11.Data(data=body)) + self._connection.send(h11.EndOfMessage()))

    async def start_stream(self, status: int, headers: Headers = ()) -> None:
        """The head of a response whose body follows in chunks; from here on a client that
        leaves cancels the route."""
        await self._send_head(status, headers)
        self.cancel_when_client_leaves()

    def cancel_when_client_leaves(self) -> None:
        """From now on, a client that closes or half-closes its side cancels the route (once the
        request's body is read: the watch reads what comes after it)."""
        if not self._watching_client:
            self._watching_client = True
            self._nursery.start_soon(self._watch_client)

    async def send_chunk(self, data: bytes) -> None:
        if data:  # an empty chunk would end the body
            await self._stream.send_all(self._connection.send(h11.Data(data=data)))

    async def end_stream(self) -> None:
        await self._send(h11.EndOfMessage())

    async def accept_websocket(self, *, subprotocol: str | None = None, headers: Headers = ()) -> ServerWebSocket:
        """Answer the upgrade with 101; the connection is the socket's from then on (its pings
        run in this request's nursery)."""
        await self.read_body()
        response_headers = [
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-accept", generate_accept_token(self.request.headers["sec-websocket-key"].encode()).decode()),
            *([("sec-websocket-protocol", subprotocol)] if subprotocol else []),
            *headers,
        ]
        await self._send(h11.InformationalResponse(status_code=101, headers=response_headers))
        self.answered = self.upgraded = True
        trailing_data, _ = self._connection.trailing_data
        socket = ServerWebSocket(
            self._stream,
            wsproto.connection.Connection(ConnectionType.SERVER, trailing_data=trailing_data),
            max_message_bytes=self._settings.websocket_max_message_bytes,
        )
        if self._settings.websocket_ping_interval is not None:
            self._nursery.start_soon(socket.ping_every, self._settings.websocket_ping_interval)
        return socket

    @property
    def max_body_bytes(self) -> int:
        return self._settings.max_body_bytes

    @property
    def keeps_connection(self) -> bool:
        connection = self._connection
        return not self._closes_connection and connection.our_state is h11.DONE and connection.their_state is h11.DONE

    async def _send_head(self, status: int, headers: Headers) -> None:
        head = list(headers)
        if self._connection.their_state is not h11.DONE:
            # The body is not read (a refusal): the connection cannot carry another request.
            head.append(("connection", "close"))
            self._closes_connection = True
        self.answered = True
        await self._send(h11.Response(status_code=status, headers=head))

    async def _send(self, event: h11.Event) -> None:
        await self._stream.send_all(self._connection.send(event) or b"")

    async def _watch_client(self) -> None:
        """Keep what the client sends next (a pipelined request); cancel the route when it leaves."""
        while len(self._connection.trailing_data[0]) <= MAX_HEAD_BYTES:
            data = await _receive(self._stream)
            self._connection.receive_data(data)
            if not data:
                self._closes_connection = True
                self._nursery.cancel_scope.cancel()
                return
        await trio.sleep_forever()


async def serve_http(
    route: Route,
    listeners: list[trio.abc.Listener[Any]],
    settings: ServerSettings,
    *,
    shutdown: Callable[[], Awaitable[None]],
) -> None:
    """Serve `route` on `listeners` until `shutdown` returns, then drain (see the module docstring)."""
    server = _Server(route, settings)
    async with trio.open_nursery() as connections:
        async with trio.open_nursery() as accepting:
            for listener in listeners:
                accepting.start_soon(
                    functools.partial(trio.serve_listeners, server.serve_connection, [listener], handler_nursery=connections)
                )
            await shutdown()
            accepting.cancel_scope.cancel()
        for listener in listeners:
            await listener.aclose()
        server.close_idle_connections()
        connections.cancel_scope.deadline = trio.current_time() + settings.graceful_timeout


class _Server:
    def __init__(self, route: Route, settings: ServerSettings) -> None:
        self._route = route
        self._settings = settings
        self._idle: set[trio.CancelScope] = set()
        self._closing = False

    def close_idle_connections(self) -> None:
        self._closing = True
        for scope in self._idle:
            scope.cancel()

    async def serve_connection(self, stream: trio.abc.Stream) -> None:
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        try:
            while (request := await self._next_request(connection, stream)) is not None:
                if not await self._serve_request(request, connection, stream):
                    return
                connection.start_next_cycle()
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            _logger.debug("a client went away in the middle of a write")
        except* Exception:
            _logger.exception("a connection failed")  # it alone: the server goes on
        finally:
            with trio.CancelScope(shield=True):
                await _close(stream)

    async def _next_request(self, connection: h11.Connection, stream: trio.abc.Stream) -> HttpRequest | None:
        """The next request's head; None once the client leaves, stays idle for the keep-alive
        timeout, breaks the protocol (answered with 400), or the server shuts down meanwhile."""
        event: Any = None
        with trio.move_on_after(self._settings.keep_alive_timeout) as idle:
            self._idle.add(idle)
            if self._closing:
                idle.cancel()
            try:
                event = await _next_event(connection, stream)
            except h11.RemoteProtocolError as error:
                await stream.send_all(_plain_response(connection, error.error_status_hint, str(error) or "Bad request"))
                return None
            finally:
                self._idle.discard(idle)
        if not isinstance(event, h11.Request):
            return None
        headers: dict[str, str] = {}
        for name, value in event.headers:  # h11 lowercases the names
            key, text = name.decode("latin-1"), value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        if connection.their_state is h11.SEND_BODY and "transfer-encoding" not in headers and headers.get("content-length", "0") == "0":
            connection.next_event()  # the end of a request without a body: it is complete
        return HttpRequest(
            method=event.method.decode("latin-1"),
            target=event.target.decode("latin-1"),
            headers=headers,
            client=_peer_of(stream),
        )

    async def _serve_request(self, request: HttpRequest, connection: h11.Connection, stream: trio.abc.Stream) -> bool:
        """Run the route for `request` in a nursery of its own; whether the connection may carry another request."""
        async with trio.open_nursery() as nursery:
            exchange = Exchange(request, connection, stream, nursery, self._settings)
            error_status = await self._run_route(exchange)
            nursery.cancel_scope.cancel()
        if error_status is not None:
            if not exchange.answered:
                await stream.send_all(_plain_response(connection, error_status, HTTPStatus(error_status).phrase))
            return False
        # Not kept: a response cut short (the client left), or one sent before the body was read.
        return not exchange.upgraded and exchange.keeps_connection

    async def _run_route(self, exchange: Exchange) -> int | None:
        """The status to answer with when the route failed (unless it answered already), else None."""
        error_status: int | None = None
        try:
            await self._route(exchange)
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            _logger.debug("a client went away in the middle of a write")
            error_status = 500
        except* h11.RemoteProtocolError as errors:
            error_status = errors.exceptions[0].error_status_hint  # type: ignore[attr-defined]
        except* Exception:
            _logger.exception("%s %s failed", exchange.request.method, exchange.request.target)
            error_status = 500
        return error_status


async def _next_event(connection: h11.Connection, stream: trio.abc.Stream) -> Any:
    while (event := connection.next_event()) is h11.NEED_DATA:
        connection.receive_data(await _receive(stream))
    return event


async def _receive(stream: trio.abc.Stream) -> bytes:
    """The next bytes from the client; nothing once it has closed its side or the connection broke."""
    try:
        return await stream.receive_some(RECEIVE_SIZE)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return b""


async def _close(stream: trio.abc.Stream) -> None:
    """Close the connection so that the client reads all we sent: a socket closed with bytes of
    the client's still unread (a body that came after its refusal) would be reset at once, and
    the client might lose the answer. So our side ends first, and what the client still sends
    is read and dropped until it ends too (at most LINGER seconds)."""
    if isinstance(stream, trio.SocketStream):
        with trio.move_on_after(LINGER):
            try:
                await stream.send_eof()
                while await stream.receive_some(RECEIVE_SIZE):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
    await stream.aclose()


def _plain_response(connection: h11.Connection, status: int, text: str) -> bytes:
    body = text.encode()
    headers = [("content-type", "text/plain; charset=utf-8"), ("content-length", str(len(body))), ("connection", "close")]
    return connection.send(h11.Response(status_code=status, headers=headers)) + connection.send(h11.Data(data=body)) + (
        connection.send(h11.EndOfMessage()) or b""
    )


def _peer_of(stream: trio.abc.Stream) -> str:
    socket_stream = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    if isinstance(socket_stream, trio.SocketStream):
        host, *_ = socket_stream.socket.getpeername()
        return str(host)
    return "unknown client"
