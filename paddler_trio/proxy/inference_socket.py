"""One client connection to `/api/v1/inference_socket` (spec 2.7): many generation requests
multiplexed over one WebSocket, each served by its own task.

* A request id may be reused once its request ended; a duplicate of an in-flight id gets
  the 400 envelope and the original keeps running.
* `StopRespondingTo` cancels that request only (the agent is told, the slot drains);
  closing the socket cancels all of them.
* A message that cannot be parsed is answered with a 400 error envelope for its request id
  when one can be found in it (with an empty id otherwise), and logged; never dropped silently.
  A request with invalid parameters gets the 400 envelope instead of closing the connection.
* `TokenGenerationDisabled` is announced on connect while the cluster is in embeddings
  mode, and every mode flip is announced; a request sent meanwhile is answered with the
  `TokenGenerationDisabled` result.
* On balancer shutdown every request gets the 503 envelope and the socket closes with 1001.
* Limits (`--max-tokens-limit`, `--max-requests-per-inference-socket`): a request asking for
  more tokens gets the 400 envelope; one beyond the in-flight limit gets the 429 envelope.
* Writes: the messages queued for the client when the writer wakes go out together (each
  its own WebSocket message, all in one write), and a request's tokens are gathered as on the
  NDJSON routes (`--stream-gather-interval`). The agent socket's reader may put a token into
  the writer's queue itself (`forwarding.py`), so that only the writer wakes for it.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any, Protocol

import trio

from paddler_trio.protocol import (
    ErrorEnvelope,
    InferenceClientBoundMessage,
    InferenceServerBoundMessage,
    RequestEnvelope,
    ResponseEnvelope,
    StopRespondingToNotification,
    TokenGenerationDisabled,
    TokenGenerationDisabledNotification,
    TokenGenerationEnabledNotification,
    WireFormatError,
    from_json,
)
from paddler_trio.proxy.forwarding import (
    CLIENT_GONE_ERRORS,
    RequestForwarder,
    error_envelope,
)
from paddler_trio.proxy.request_validation import (
    generation_request_problems,
    invalid_parameters_description,
)
from paddler_trio.proxy.shutdown_signal import ShutdownSignal
from paddler_trio.queued_messages import put_into, queued_texts, send_now_into
from paddler_trio.transport.server_websocket import ServerWebSocket

_logger = logging.getLogger(__name__)

OUTBOX_CAPACITY = 256
# Messages written together at most (about 64 KiB of token messages).
MAX_MESSAGES_PER_WRITE = 256
TOKEN_GENERATION_DISABLED_DESCRIPTION = "Token generation is disabled while the cluster is configured for embeddings"

CLOSE_GOING_AWAY = 1001


class TokenGenerationMode(Protocol):
    """Whether the cluster generates tokens (it does not in embeddings mode), and its changes."""

    @property
    def token_generation_enabled(self) -> bool: ...

    @property
    def version(self) -> int: ...

    async def wait_changed(self, seen_version: int) -> int: ...


class InferenceSocketSession:
    def __init__(
        self,
        websocket: ServerWebSocket,
        *,
        forwarder: RequestForwarder,
        mode: TokenGenerationMode,
        shutdown: ShutdownSignal,
        max_tokens_limit: int | None = None,
        max_requests_in_flight: int | None = None,
        stream_gather_interval: float = 0.0,
    ) -> None:
        self._stream_gather_interval = stream_gather_interval
        self._max_tokens_limit = max_tokens_limit
        self._max_requests_in_flight = max_requests_in_flight
        self._websocket = websocket
        self._forwarder = forwarder
        self._mode = mode
        self._shutdown = shutdown
        self._in_flight: dict[str, trio.CancelScope] = {}
        # What the socket's writer task sends, in order.
        self._outbox_send, self._outbox = trio.open_memory_channel[InferenceClientBoundMessage](OUTBOX_CAPACITY)

    async def serve(self) -> None:
        """Serve the socket until the client leaves (its requests are cancelled) or the balancer
        shuts down (they get the 503 envelope, and the socket closes with 1001)."""
        outbox_send, outbox_receive = self._outbox_send, self._outbox
        async with trio.open_nursery() as socket_nursery:
            socket_nursery.start_soon(self._write, outbox_receive)
            async with outbox_send, trio.open_nursery() as requests:
                announcer = await requests.start(self._announce_mode, outbox_send)
                with self._shutdown.cancel_scope() as shutting_down:
                    await self._read(requests, outbox_send)
                if not shutting_down.cancelled_caught:  # the client left
                    socket_nursery.cancel_scope.cancel()
                announcer.cancel()
        if shutting_down.cancelled_caught:
            await self._websocket.close(CLOSE_GOING_AWAY, "Server shutting down")

    async def _read(self, requests: trio.Nursery, outbox: trio.MemorySendChannel[InferenceClientBoundMessage]) -> None:
        while (data := await self._websocket.receive()) is not None:
            if isinstance(data, bytes):
                continue  # binary frames are ignored, as Paddler does
            try:
                message = from_json(data, InferenceServerBoundMessage)
            except WireFormatError as error:
                request_id = _request_id_in(data)
                _logger.warning("inference socket: invalid message for request %r: %s", request_id, error)
                await outbox.send(error_envelope(request_id or "", 400, f"Invalid message: {error}"))
                continue
            if isinstance(message, RequestEnvelope):
                await self._start(requests, message, outbox)
            elif isinstance(message, StopRespondingToNotification):
                scope = self._in_flight.get(message.request_id)
                if scope is not None:
                    scope.cancel()
            elif isinstance(message, ErrorEnvelope):
                _logger.info("inference socket client reported an error: %s", message.error.description)

    async def _start(
        self,
        requests: trio.Nursery,
        message: RequestEnvelope[Any],
        outbox: trio.MemorySendChannel[InferenceClientBoundMessage],
    ) -> None:
        request_id = message.id
        if request_id in self._in_flight:
            await outbox.send(
                error_envelope(request_id, 400, f'Request id "{request_id}" is already in flight on this connection')
            )
            return
        if self._max_requests_in_flight is not None and len(self._in_flight) >= self._max_requests_in_flight:
            _logger.info("inference socket: request %r refused, %d already in flight", request_id, len(self._in_flight))
            await outbox.send(
                error_envelope(
                    request_id,
                    429,
                    f"Too many requests in flight on this connection (limit {self._max_requests_in_flight}, "
                    "--max-requests-per-inference-socket)",
                )
            )
            return
        problems = generation_request_problems(message.request, max_tokens_limit=self._max_tokens_limit)
        if problems:
            await outbox.send(error_envelope(request_id, 400, invalid_parameters_description(problems)))
            return
        if not self._mode.token_generation_enabled:
            await outbox.send(
                ResponseEnvelope(
                    generated_by=None,
                    request_id=request_id,
                    response=TokenGenerationDisabled(TOKEN_GENERATION_DISABLED_DESCRIPTION),
                )
            )
            return
        scope = trio.CancelScope()
        self._in_flight[request_id] = scope
        requests.start_soon(self._serve_request, request_id, message.request, scope, outbox)

    async def _serve_request(
        self,
        request_id: str,
        request: Any,
        scope: trio.CancelScope,
        outbox: trio.MemorySendChannel[InferenceClientBoundMessage],
    ) -> None:
        try:
            with scope:
                await self._forwarder.serve(
                    request_id, request, put_into(outbox), gather=self._stream_gather_interval, emit_now=send_now_into(outbox)
                )
        except Exception:
            _logger.exception("inference socket request %s failed", request_id)
            with contextlib.suppress(*CLIENT_GONE_ERRORS):
                await outbox.send(error_envelope(request_id, 500, "Internal server error"))
        finally:
            if self._in_flight.get(request_id) is scope:
                del self._in_flight[request_id]

    async def _announce_mode(
        self,
        outbox: trio.MemorySendChannel[InferenceClientBoundMessage],
        *,
        task_status: trio.TaskStatus[trio.CancelScope],
    ) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            enabled = self._mode.token_generation_enabled
            version = self._mode.version
            if not enabled:
                await outbox.send(TokenGenerationDisabledNotification())
            while True:
                version = await self._mode.wait_changed(version)
                if self._mode.token_generation_enabled != enabled:
                    enabled = not enabled
                    await outbox.send(
                        TokenGenerationEnabledNotification() if enabled else TokenGenerationDisabledNotification()
                    )

    async def _write(self, outbox: trio.MemoryReceiveChannel[InferenceClientBoundMessage]) -> None:
        async with outbox:
            try:
                async for message in outbox:
                    await self._websocket.send_texts(queued_texts(message, outbox, MAX_MESSAGES_PER_WRITE))
            except CLIENT_GONE_ERRORS:
                pass  # the reader sees the socket's end too, and ends the session


def _request_id_in(data: str) -> str | None:
    """The id of a `{"Request": {"id": ...}}` message that failed to parse, if it has one."""
    try:
        value = json.loads(data)
    except ValueError:
        return None
    request = value.get("Request") if isinstance(value, dict) else None
    request_id = request.get("id") if isinstance(request, dict) else None
    return request_id if isinstance(request_id, str) else None
