"""Hypercorn's trio worker with a front door: each request head of an HTTP/1.1 connection is read
here first, and a `Takeover` may claim it for its own handler (the inference port's WebSocket,
whose token frames are too many for one ASGI send each, and its NDJSON generation routes, where
Quart and Hypercorn cost a millisecond before the first token). A handler that has answered its
request gives the connection back to the front (keep-alive: the next request is offered again);
one that declines, or any request no takeover claims, sends the connection with the bytes
already read to Hypercorn, which serves it from then on: HTTP/1.1, HTTP/2 (h2c or ALPN), TLS.

`serve_with_front` is `hypercorn.trio.serve` (0.18's `worker_serve`: lifespan, sockets,
listeners, graceful shutdown) with that change, and the two that make Hypercorn's kept-alive
connections sound (`keep_alive.py`), so it uses Hypercorn's own building blocks (`TCPServer`,
`WorkerContext`, `Lifespan`); pyproject.toml pins Hypercorn to the 0.18 series.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import h11
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.statsd import StatsdLogger
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState, LifespanState
from hypercorn.utils import ShutdownError, raise_shutdown, repr_socket_addr, wrap_app

from paddler_trio.proxy.keep_alive import KeptAliveTCPServer, keeping_connections_sound

_logger = logging.getLogger(__name__)

RECEIVE_SIZE = 65536
# A request head longer than this is not one we take over (Hypercorn answers it).
MAX_HEAD_BYTES = 16 * 1024


@attrs.frozen
class Answered:
    """The handler answered its request and the connection may carry another; `unread` is what it
    read from the client beyond that request (the start of the next one, if the client pipelines)."""

    unread: bytes = b""


@attrs.frozen
class Declined:
    """The handler will not answer the request: Hypercorn serves the connection from `received` on
    (everything read from the client since the request's head began)."""

    received: bytes


# Given a connection's stream and everything read from it since the request's head began, answer
# the request. None: the connection is over (the front closes it).
ConnectionHandler = Callable[[trio.abc.Stream, bytes], Awaitable[Answered | Declined | None]]
# Given a request head, the handler that takes the request, or None.
Takeover = Callable[[h11.Request], ConnectionHandler | None]


def authorization_of(headers: dict[bytes, bytes]) -> str | None:
    """The `Authorization` header among a request head's (h11 lowercases their names)."""
    value = headers.get(b"authorization")
    return None if value is None else value.decode("latin-1")


def first_of(*takeovers: Takeover) -> Takeover:
    """The handler of the first takeover that claims a request."""

    def takeover(request: h11.Request) -> ConnectionHandler | None:
        for candidate in takeovers:
            handler = candidate(request)
            if handler is not None:
                return handler
        return None

    return takeover


async def serve_with_front(
    app: Any,
    config: HypercornConfig,
    takeover: Takeover,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` on `config.bind` as `hypercorn.trio.serve` does, but offer each connection to `takeover` first."""
    config.set_statsd_logger_class(StatsdLogger)
    wrapped = wrap_app(keeping_connections_sound(app), config.wsgi_max_body_size, None)
    lifespan_state: LifespanState = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    context = WorkerContext(None)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as server_nursery:
            listeners, binds = _listeners(config)
            hypercorn_connection = functools.partial(
                KeptAliveTCPServer, wrapped, config, context, ConnectionState(lifespan_state.copy())
            )

            async def handle(stream: trio.abc.Stream) -> None:
                await _route(stream, config, context, takeover, hypercorn_connection)

            task_status.started(binds)
            try:
                async with trio.open_nursery(strict_exception_groups=True) as nursery:
                    nursery.start_soon(raise_shutdown, shutdown_trigger)
                    nursery.start_soon(raise_shutdown, context.terminate.wait)
                    nursery.start_soon(
                        functools.partial(trio.serve_listeners, handle, listeners, handler_nursery=server_nursery)
                    )
                    await trio.sleep_forever()
            except BaseExceptionGroup as error:
                _, other_errors = error.split((ShutdownError, KeyboardInterrupt))
                if other_errors is not None:
                    raise other_errors from None
            finally:
                await context.terminated.set()
                server_nursery.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


def _listeners(config: HypercornConfig) -> tuple[list[trio.abc.Listener[Any]], list[str]]:
    sockets = config.create_sockets()
    ssl_context = config.create_ssl_context()
    listeners: list[trio.abc.Listener[Any]] = []
    binds: list[str] = []
    for sock in sockets.secure_sockets:
        sock.listen(config.backlog)
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        listeners.append(trio.SSLListener(listener, ssl_context, https_compatible=True))
        binds.append(f"https://{repr_socket_addr(sock.family, sock.getsockname())}")
    for sock in sockets.insecure_sockets:
        sock.listen(config.backlog)
        listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
        binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
    return listeners, binds


async def _route(
    stream: trio.abc.Stream,
    config: HypercornConfig,
    context: WorkerContext,
    takeover: Takeover,
    hypercorn_connection: Callable[[trio.abc.Stream], KeptAliveTCPServer],
) -> None:
    received = b""
    request: h11.Request | None = None
    with trio.move_on_after(config.keep_alive_timeout) as waiting:
        if await _speaks_http1(stream, config):
            received, request = await _read_request_head(stream)
    if waiting.cancelled_caught:
        await stream.aclose()
        return
    while request is not None and (handler := takeover(request)) is not None:
        outcome = await _serve_taken(handler, stream, received)
        if isinstance(outcome, Declined):
            received = outcome.received
            break
        if outcome is None:
            return
        received, request = await _next_request_head(stream, outcome.unread, config, context)
        if request is None and not received:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            return
    await hypercorn_connection(_Replayed(stream, received))


async def _serve_taken(handler: ConnectionHandler, stream: trio.abc.Stream, received: bytes) -> Answered | Declined | None:
    """Run a takeover's handler; whatever happens to one connection stays with that connection."""
    outcome: Answered | Declined | None = None
    try:
        outcome = await handler(stream, received)
    except* (trio.BrokenResourceError, trio.ClosedResourceError):
        _logger.debug("a client went away in the middle of a write")
    except* Exception:
        _logger.exception("a connection taken over from Hypercorn failed")
    finally:
        if outcome is None:
            with trio.CancelScope(shield=True):
                await stream.aclose()
    return outcome


async def _next_request_head(
    stream: trio.abc.Stream, unread: bytes, config: HypercornConfig, context: WorkerContext
) -> tuple[bytes, h11.Request | None]:
    """The next request of a kept-alive connection, as `_read_request_head`; nothing once the
    client has been idle for the keep-alive timeout or the server shuts down while it is idle
    (as Hypercorn closes its own idle connections)."""
    received, request = b"", None
    async with trio.open_nursery() as nursery:

        async def stop_at_shutdown() -> None:
            await context.terminated.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(stop_at_shutdown)
        with trio.move_on_after(config.keep_alive_timeout):
            received, request = await _read_request_head(stream, unread)
        nursery.cancel_scope.cancel()
    return received, request


async def _speaks_http1(stream: trio.abc.Stream, config: HypercornConfig) -> bool:
    """False for a TLS connection that agreed on HTTP/2, or whose handshake fails (Hypercorn then
    sees the failure itself)."""
    if not isinstance(stream, trio.SSLStream):
        return True
    try:
        with trio.fail_after(config.ssl_handshake_timeout):
            await stream.do_handshake()
    except (trio.BrokenResourceError, trio.TooSlowError):
        return False
    return stream.selected_alpn_protocol() != "h2"


async def _read_request_head(stream: trio.abc.Stream, received: bytes = b"") -> tuple[bytes, h11.Request | None]:
    """Read until a request head is complete; the bytes read (with `received`, what was read
    before) and the request, if it is one."""
    while b"\r\n\r\n" not in received and len(received) <= MAX_HEAD_BYTES:
        try:
            data = await stream.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return received, None
        if not data:
            return received, None
        received += data
    parser = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
    try:
        parser.receive_data(received)
        event = parser.next_event()
    except h11.RemoteProtocolError:
        return received, None
    return received, event if isinstance(event, h11.Request) else None


class _Replayed(trio.abc.Stream):
    """A connection's stream that first hands back the bytes already read from it; everything
    else (Hypercorn reads `socket`, `do_handshake`, `transport_stream`) goes to the stream."""

    def __init__(self, stream: trio.abc.Stream, received: bytes) -> None:
        self._stream = stream
        self._pending = received

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._pending:
            size = len(self._pending) if max_bytes is None else max_bytes
            data, self._pending = self._pending[:size], self._pending[size:]
            await trio.lowlevel.checkpoint()
            return data
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._stream.send_eof()  # type: ignore[attr-defined]

    async def aclose(self) -> None:
        await self._stream.aclose()
