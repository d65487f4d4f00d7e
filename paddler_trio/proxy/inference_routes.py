"""The inference service (spec 2): `/health`, the three NDJSON routes and the inference socket.

A POST route first checks its body and the cluster's mode and answers problems with a
plain HTTP error whose body is the description, as plain text (spec 2.4). Past those checks the
answer is HTTP 200 with one JSON message per line, errors included (spec 2.5).

Each NDJSON request is served by a task in the balancer's request nursery that feeds the
response body through a small channel (`ndjson_chunks`). The body starts that task and
cancels it when it ends: a client that disconnects (Quart-Trio cancels the response when
Hypercorn reports `http.disconnect`, also while nothing is being written, e.g. while the
request waits in the buffer) thereby leaves the buffer at once, or makes the forwarder stop
the agent and drain the slot. Generation requests that pass every check are usually served
by the port's front instead (`ndjson_generation_takeover.py`), from the same pieces.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol, TypeVar

import trio
from quart import Response, request, websocket
from quart_trio import QuartTrio

from paddler_trio.protocol import (
    AgentDesiredState,
    ContinueFromConversationHistoryParams,
    ContinueFromRawPromptParams,
    EmbeddingDone,
    GenerateEmbeddingBatchParams,
    InferenceClientBoundMessage,
    ResponseEnvelope,
    WireFormatError,
    from_json,
    to_json,
)
from paddler_trio.proxy.agent_pool import AgentPool
from paddler_trio.proxy.embedding_batch_chunks import chunk_evenly_with_cap
from paddler_trio.proxy.forwarding import (
    CLIENT_GONE_ERRORS,
    Emit,
    EmitNow,
    RequestForwarder,
    error_envelope,
)
from paddler_trio.proxy.inference_socket import (
    TOKEN_GENERATION_DISABLED_DESCRIPTION,
    InferenceSocketSession,
    TokenGenerationMode,
)
from paddler_trio.proxy.message_socket import MessageSocket, QuartMessageSocket
from paddler_trio.proxy.request_id import new_request_id
from paddler_trio.proxy.request_validation import (
    generation_request_problems,
    invalid_parameters_description,
)
from paddler_trio.proxy.service_app import create_service_app, plain_text_error
from paddler_trio.proxy.shutdown_signal import ShutdownSignal
from paddler_trio.proxy.websocket_takeover import SocketHandler
from paddler_trio.queued_messages import put_into, queued_texts, drainer_is_idle

_logger = logging.getLogger(__name__)

# Messages a request may run ahead of its client before the forwarder waits for the client.
STREAM_BUFFER = 64
MAX_LINES_PER_CHUNK = STREAM_BUFFER

INFERENCE_SOCKET_PATH = "/api/v1/inference_socket"

ParamsT = TypeVar("ParamsT")
# What an NDJSON response runs: it emits the response's messages, and with an `EmitNow` may
# also hand some on at once (see `ndjson_chunks`).
StreamWork = Callable[[Emit, EmitNow | None], Awaitable[None]]


class ApplicableStateSource(TokenGenerationMode, Protocol):
    """The cluster's applicable state (the reconciliation service provides it)."""

    @property
    def applicable_state(self) -> AgentDesiredState | None: ...


class InferenceService:
    def __init__(
        self,
        *,
        forwarder: RequestForwarder,
        pool: AgentPool,
        cluster: ApplicableStateSource,
        shutdown: ShutdownSignal,
        request_nursery: trio.Nursery,
        max_tokens_limit: int | None = None,
        max_requests_per_socket: int | None = None,
        stream_gather_interval: float = 0.0,
    ) -> None:
        """`stream_gather_interval`: tokens of one NDJSON stream that follow each other this closely
        are handed on together and written as one chunk (RequestForwarder.serve); the first
        token, and the first after a pause, are never held back."""
        self._stream_gather_interval = stream_gather_interval
        self._max_tokens_limit = max_tokens_limit
        self._max_requests_per_socket = max_requests_per_socket
        self._forwarder = forwarder
        self._pool = pool
        self._cluster = cluster
        self._shutdown = shutdown
        self._request_nursery = request_nursery

    def create_app(self, cors_allowed_origins: list[str]) -> QuartTrio:
        app = create_service_app("paddler-inference", cors_allowed_origins)
        app.add_url_rule("/health", view_func=self.health, methods=["GET"])
        app.add_url_rule(
            "/api/v1/continue_from_conversation_history",
            view_func=self.continue_from_conversation_history,
            methods=["POST"],
        )
        app.add_url_rule("/api/v1/continue_from_raw_prompt", view_func=self.continue_from_raw_prompt, methods=["POST"])
        app.add_url_rule("/api/v1/generate_embedding_batch", view_func=self.generate_embedding_batch, methods=["POST"])
        app.add_websocket(INFERENCE_SOCKET_PATH, view_func=self.inference_socket)
        return app

    async def health(self) -> Response:
        return Response("OK", content_type="text/plain")

    async def continue_from_conversation_history(self) -> Response:
        return await self._generation(ContinueFromConversationHistoryParams)

    async def continue_from_raw_prompt(self) -> Response:
        return await self._generation(ContinueFromRawPromptParams)

    async def _generation(
        self, params_type: type[ContinueFromConversationHistoryParams | ContinueFromRawPromptParams]
    ) -> Response:
        params = await _read_body(params_type)
        if isinstance(params, Response):
            return params
        if not self._cluster.token_generation_enabled:  # checked first, as in Paddler
            return plain_text_error(501, TOKEN_GENERATION_DISABLED_DESCRIPTION)
        problems = generation_request_problems(params)
        if problems:
            return plain_text_error(400, invalid_parameters_description(problems))
        return self._ndjson(*self.generation(params))

    def accepts_generation(self, params: ContinueFromConversationHistoryParams | ContinueFromRawPromptParams) -> bool:
        """Whether the generation route would stream `params` (every check it and the request
        limits make before the stream starts passes)."""
        return (
            not generation_request_problems(params, max_tokens_limit=self._max_tokens_limit)
            and self._cluster.token_generation_enabled
        )

    def generation(
        self, params: ContinueFromConversationHistoryParams | ContinueFromRawPromptParams
    ) -> tuple[str, StreamWork]:
        """A new request id, and the work that forwards `params` under it."""
        request_id = new_request_id()
        return request_id, lambda emit, emit_now: self._forwarder.serve(
            request_id, params, emit, gather=self._stream_gather_interval, emit_now=emit_now
        )

    async def generate_embedding_batch(self) -> Response:
        params = await _read_body(GenerateEmbeddingBatchParams)
        if isinstance(params, Response):
            return params
        state = self._cluster.applicable_state
        if state is None:
            return plain_text_error(503, "Balancer applicable state is not yet set")
        if not state.inference_parameters.enable_embeddings:
            return plain_text_error(501, "Embedding generation is not enabled in the inference parameters")
        agent_count = len(self._pool.agents)
        if agent_count == 0:
            return plain_text_error(503, "No agents are currently connected")
        chunks = chunk_evenly_with_cap(
            params.input_batch, agent_count=agent_count, cap=state.inference_parameters.embedding_batch_size
        )
        done_id = new_request_id()

        async def fan_out(emit: Emit, _: EmitNow | None) -> None:
            async def emit_all_but_done(message: InferenceClientBoundMessage) -> None:
                if not (isinstance(message, ResponseEnvelope) and isinstance(message.response, EmbeddingDone)):
                    await emit(message)

            async with trio.open_nursery() as nursery:
                for chunk in chunks:
                    chunk_params = GenerateEmbeddingBatchParams(
                        input_batch=tuple(chunk), normalization_method=params.normalization_method
                    )
                    nursery.start_soon(self._forwarder.serve, new_request_id(), chunk_params, emit_all_but_done)
            await emit(ResponseEnvelope(generated_by=None, request_id=done_id, response=EmbeddingDone()))

        return self._ndjson(done_id, fan_out)

    def socket_route(self, path: str) -> SocketHandler | None:
        """The inference socket's handler for an upgrade the port's front takes over (`websocket_takeover.py`)."""
        if path != INFERENCE_SOCKET_PATH:
            return None
        return lambda socket: self.socket_session(socket).serve()

    async def inference_socket(self) -> None:
        """The inference socket when the upgrade reached Quart (see `socket_route`)."""
        await self.socket_session(QuartMessageSocket(websocket._get_current_object())).serve()  # type: ignore[attr-defined]

    def socket_session(self, socket: MessageSocket) -> InferenceSocketSession:
        return InferenceSocketSession(
            socket,
            forwarder=self._forwarder,
            mode=self._cluster,
            shutdown=self._shutdown,
            max_tokens_limit=self._max_tokens_limit,
            max_requests_in_flight=self._max_requests_per_socket,
            stream_gather_interval=self._stream_gather_interval,
        )

    def _ndjson(self, request_id: str, work: StreamWork) -> Response:
        """HTTP 200 streaming one JSON message per line, produced by `work` in its own task."""

        async def body() -> AsyncIterator[bytes]:
            async with self.ndjson_chunks(request_id, work) as chunks:
                async for chunk in chunks:
                    yield chunk

        response = Response(body(), status=200, content_type="application/json")
        response.headers["Cache-Control"] = "no-cache"
        response.timeout = None
        return response

    @contextlib.asynccontextmanager
    async def ndjson_chunks(
        self, request_id: str, work: StreamWork, *, write_now: Callable[[bytes], bool] | None = None
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """The NDJSON body of `work` (run in its own task of the request nursery), as chunks of
        whole lines. Leaving the context cancels `work` (the client went away, or the stream ended).

        With `write_now` (writes a chunk to the client at once if it can), `work` may also hand
        messages on that way while the reader of the chunks waits with nothing queued."""

        def emit_now(message: InferenceClientBoundMessage) -> bool:
            assert write_now is not None
            return drainer_is_idle(receive) and write_now((to_json(message) + "\n").encode())

        async def run(send: trio.MemorySendChannel[InferenceClientBoundMessage], scope: trio.CancelScope) -> None:
            with scope:
                async with send:
                    try:
                        await work(put_into(send), emit_now if write_now is not None else None)
                    except CLIENT_GONE_ERRORS:
                        pass
                    except Exception:
                        _logger.exception("request %s failed", request_id)
                        with contextlib.suppress(*CLIENT_GONE_ERRORS):
                            await send.send(error_envelope(request_id, 500, "Internal server error"))

        send, receive = trio.open_memory_channel[InferenceClientBoundMessage](STREAM_BUFFER)
        scope = trio.CancelScope()
        self._request_nursery.start_soon(run, send, scope)
        try:
            with receive:
                yield _NdjsonChunks(receive)
        finally:
            scope.cancel()


class _NdjsonChunks:
    """Messages as NDJSON chunks: each holds every message that was waiting when it was made."""

    def __init__(self, receive: trio.MemoryReceiveChannel[InferenceClientBoundMessage]) -> None:
        self._receive = receive

    def __aiter__(self) -> _NdjsonChunks:
        return self

    async def __anext__(self) -> bytes:
        try:
            message = await self._receive.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
        return "\n".join([*queued_texts(message, self._receive, MAX_LINES_PER_CHUNK), ""]).encode()


async def _read_body(params_type: type[ParamsT]) -> ParamsT | Response:
    """The request body parsed as `params_type`, or the 400 response that explains why it is not one."""
    body = await request.get_data(as_text=False)
    try:
        return from_json(body, params_type)
    except WireFormatError as error:
        _logger.info("refused %s %s: %s", request.method, request.path, error)
        return plain_text_error(400, f"Invalid request body: {error}")
