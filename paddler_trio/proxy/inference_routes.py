"""The inference service (spec 2): `/health`, `/openapi.json`, the three NDJSON routes and the
inference socket, served on the inference port by our own HTTP server (`transport/http_server.py`,
where docs/architecture.md says why this port is not on Hypercorn and Quart).

Every route of the port is here, with what guards it: Paddler's CORS policy (`cors_policy.py`),
the API keys (`security/api_keys.py`: every route but `/health`, `/openapi.json` and CORS
preflights), the body size limit (a 413) and `--max-tokens-limit` (a 400), refused with the
native error body `{"error": ...}` as on the balancer's other services.

A POST route first checks its body and the cluster's mode and answers problems with a plain
HTTP error whose body is the description, as plain text (spec 2.4). Past those checks the
answer is HTTP 200 with one JSON message per line, errors included (spec 2.5).

Each NDJSON request's work (the forwarder serving it) runs in a nursery the route opens, and
feeds the response through a small channel: every message waiting when the route wakes goes
out as one chunk. A client that leaves cancels the route (the server watches it), and with it
the work: a request still in the buffer leaves it at once, one at an agent is stopped and its
slot drained (`forwarding.py`).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import trio

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
)
from paddler_trio.proxy.agent_pool import AgentPool
from paddler_trio.proxy.cors_policy import ORIGIN_NOT_ALLOWED, PREFLIGHT_HEADERS, CorsPolicy
from paddler_trio.proxy.embedding_batch_chunks import chunk_evenly_with_cap
from paddler_trio.proxy.forwarding import Emit, EmitNow, RequestForwarder, emit_all_into
from paddler_trio.proxy.inference_socket import (
    TOKEN_GENERATION_DISABLED_DESCRIPTION,
    InferenceSocketSession,
    TokenGenerationMode,
)
from paddler_trio.proxy.openapi_documents import OPENAPI_PATH
from paddler_trio.proxy.request_id import new_request_id
from paddler_trio.proxy.request_validation import generation_request_problems, invalid_parameters_description
from paddler_trio.proxy.shutdown_signal import ShutdownSignal
from paddler_trio.queued_messages import put_into, queued_texts, send_now_into
from paddler_trio.security.api_keys import (
    WEBSOCKET_QUERY_PARAMETER,
    ApiKeys,
    KeyRefusal,
    check_websocket_key,
    refusal_of_request,
)
from paddler_trio.security.error_shapes import native_error_body
from paddler_trio.security.refusal_log import RefusalLog
from paddler_trio.security.request_limits import body_too_large_description, max_tokens_exceeded
from paddler_trio.transport.http_server import BodyTooLarge, Exchange

_logger = logging.getLogger(__name__)

# Messages a request may run ahead of its client before the forwarder waits for the client.
STREAM_BUFFER = 64
MAX_LINES_PER_CHUNK = STREAM_BUFFER

INFERENCE_SOCKET_PATH = "/api/v1/inference_socket"
OPEN_PATHS = frozenset({"/health", OPENAPI_PATH})
PLAIN_TEXT = "text/plain; charset=utf-8"
NOT_FOUND = "The requested URL was not found on the server. If you entered the URL manually please check your spelling and try again."
METHOD_NOT_ALLOWED = "The method is not allowed for the requested URL."

ParamsT = TypeVar("ParamsT")
GenerationParams = ContinueFromConversationHistoryParams | ContinueFromRawPromptParams
# What an NDJSON response runs: it emits the response's messages, and may also hand some on
# without waiting (the agent socket's reader does, for tokens: see `forwarding.py`).
StreamWork = Callable[[Emit, EmitNow], Awaitable[None]]
Handler = Callable[[Exchange, list[tuple[str, str]]], Awaitable[None]]


class ApplicableStateSource(TokenGenerationMode, Protocol):
    """The cluster's applicable state (the reconciliation service provides it)."""

    @property
    def applicable_state(self) -> AgentDesiredState | None: ...


class _Refused(Exception):
    """A request answered with an error before its route ran."""

    def __init__(self, status: int, body: str, content_type: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(body)
        self.status, self.body, self.content_type, self.headers = status, body, content_type, headers


class InferenceService:
    def __init__(
        self,
        *,
        forwarder: RequestForwarder,
        pool: AgentPool,
        cluster: ApplicableStateSource,
        shutdown: ShutdownSignal,
        keys: ApiKeys,
        cors: CorsPolicy,
        openapi_document: dict[str, Any],
        max_tokens_limit: int | None = None,
        max_requests_per_socket: int | None = None,
        stream_gather_interval: float = 0.0,
    ) -> None:
        """`stream_gather_interval`: tokens of one NDJSON stream that follow each other this closely
        are handed on together and written as one chunk (RequestForwarder.serve); the first
        token, and the first after a pause, are never held back."""
        self._forwarder = forwarder
        self._pool = pool
        self._cluster = cluster
        self._shutdown = shutdown
        self._keys = keys
        self._cors = cors
        self._openapi_text = json.dumps(openapi_document).encode()
        self._max_tokens_limit = max_tokens_limit
        self._max_requests_per_socket = max_requests_per_socket
        self._stream_gather_interval = stream_gather_interval
        self._refusals = RefusalLog(_logger)
        self._routes: dict[str, tuple[str, Handler]] = {
            "/health": ("GET", self._health),
            OPENAPI_PATH: ("GET", self._openapi),
            "/api/v1/continue_from_conversation_history": ("POST", self._conversation_history),
            "/api/v1/continue_from_raw_prompt": ("POST", self._raw_prompt),
            "/api/v1/generate_embedding_batch": ("POST", self._embedding_batch),
            INFERENCE_SOCKET_PATH: ("GET", self._inference_socket),
        }

    async def handle(self, exchange: Exchange) -> None:
        """Answer one request of the inference port (the server's route)."""
        request = exchange.request
        origin = request.headers.get("origin")
        cors_headers = [*self._cors.allow_origin_header(origin), ("vary", "Origin")]
        try:
            handler = self._handler_for(exchange)
            await handler(exchange, cors_headers)
        except _Refused as refused:
            headers = [("content-type", refused.content_type), *refused.headers, *cors_headers]
            await exchange.respond(refused.status, refused.body.encode(), headers)

    def _handler_for(self, exchange: Exchange) -> Handler:
        """The handler of a request, or `_Refused` (a preflight, then the key, then the route, as
        Quart's apps check them: an unknown route needs a key too)."""
        request = exchange.request
        if self._cors.is_preflight(request.method, request.headers.get("access-control-request-method")):
            if not self._cors.allows(request.headers.get("origin")):
                raise _Refused(400, ORIGIN_NOT_ALLOWED, PLAIN_TEXT)
            return _answer_preflight
        # The socket takes its key also as a subprotocol or a query parameter: it checks its own.
        if request.method != "OPTIONS" and request.path not in OPEN_PATHS and request.path != INFERENCE_SOCKET_PATH:
            refusal = refusal_of_request(self._keys, request.headers.get("authorization"))
            if refusal is not None:
                raise self._refused_key(exchange, refusal)
        route = self._routes.get(request.path)
        if route is None:
            raise _Refused(404, NOT_FOUND, PLAIN_TEXT)
        method, handler = route
        if request.method == "OPTIONS":
            return _answer_options(method)
        if request.method != method:
            raise _Refused(405, METHOD_NOT_ALLOWED, PLAIN_TEXT, (("allow", f"{method}, OPTIONS"),))
        return handler

    def _refused_key(self, exchange: Exchange, refusal: KeyRefusal) -> _Refused:
        request = exchange.request
        self._refusals.refused(request.client, refusal.reason, "inference service refused %s: %s", request.path, refusal.reason)
        return _Refused(401, native_error_body(refusal.description), "application/json", (("www-authenticate", "Bearer"),))

    async def _read_params(self, exchange: Exchange, params_type: type[ParamsT]) -> ParamsT:
        """The request body parsed as `params_type`, after the body size and token limits."""
        request = exchange.request
        try:
            body = await exchange.read_body()
        except BodyTooLarge:
            self._refusals.refused(request.client, "body size", "inference service refused %s: body too large", request.path)
            raise _Refused(
                413, native_error_body(body_too_large_description(exchange.max_body_bytes)), "application/json"
            ) from None
        if self._max_tokens_limit is not None and (exceeded := max_tokens_exceeded(body, self._max_tokens_limit)):
            self._refusals.refused(
                request.client,
                "max tokens",
                "inference service refused %s: %s %d over the limit",
                request.path,
                exceeded.field,
                exceeded.value,
            )
            raise _Refused(400, native_error_body(exceeded.description), "application/json")
        try:
            return from_json(body, params_type)
        except WireFormatError as error:
            _logger.info("refused %s %s: %s", request.method, request.path, error)
            raise _Refused(400, f"Invalid request body: {error}", PLAIN_TEXT) from None

    async def _health(self, exchange: Exchange, cors_headers: list[tuple[str, str]]) -> None:
        await exchange.respond(200, b"OK", [("content-type", "text/plain"), *cors_headers])

    async def _openapi(self, exchange: Exchange, cors_headers: list[tuple[str, str]]) -> None:
        await exchange.respond(200, self._openapi_text, [("content-type", "application/json"), *cors_headers])

    async def _conversation_history(self, exchange: Exchange, cors_headers: list[tuple[str, str]]) -> None:
        await self._generation(exchange, cors_headers, ContinueFromConversationHistoryParams)

    async def _raw_prompt(self, exchange: Exchange, cors_headers: list[tuple[str, str]]) -> None:
        await self._generation(exchange, cors_headers, ContinueFromRawPromptParams)

    async def _generation(
        self, exchange: Exchange, cors_headers: list[tuple[str, str]], params_type: type[GenerationParams]
    ) -> None:
        params = await self._read_params(exchange, params_type)
        if not self._cluster.token_generation_enabled:  # checked first, as in Paddler
            raise _Refused(501, TOKEN_GENERATION_DISABLED_DESCRIPTION, PLAIN_TEXT)
        problems = generation_request_problems(params)
        if problems:
            raise _Refused(400, invalid_parameters_description(problems), PLAIN_TEXT)
        request_id = new_request_id()

        async def work(emit: Emit, emit_now: EmitNow) -> None:
            await self._forwarder.serve(request_id, params, emit, gather=self._stream_gather_interval, emit_now=emit_now)

        await _stream_ndjson(exchange, cors_headers, request_id, work)

    async def _embedding_batch(self, exchange: Exchange, cors_headers: list[tuple[str, str]]) -> None:
        params = await self._read_params(exchange, GenerateEmbeddingBatchParams)
        state = self._cluster.applicable_state
        if state is None:
            raise _Refused(503, "Balancer applicable state is not yet set", PLAIN_TEXT)
        if not state.inference_parameters.enable_embeddings:
            raise _Refused(501, "Embedding generation is not enabled in the inference parameters", PLAIN_TEXT)
        agent_count = len(self._pool.engine_agents)
        if agent_count == 0:
            raise _Refused(503, "No agents are currently connected", PLAIN_TEXT)
        chunks = chunk_evenly_with_cap(
            params.input_batch, agent_count=agent_count, cap=state.inference_parameters.embedding_batch_size
        )
        done_id = new_request_id()

        async def fan_out(emit: Emit, _: EmitNow) -> None:
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

        await _stream_ndjson(exchange, cors_headers, done_id, fan_out)

    async def _inference_socket(self, exchange: Exchange, cors_headers: list[tuple[str, str]]) -> None:
        request = exchange.request
        if not request.is_websocket_upgrade:
            raise _Refused(400, "This route takes WebSocket upgrades only", PLAIN_TEXT)
        check = check_websocket_key(
            self._keys, request.headers.get("authorization"), request.websocket_subprotocols, request.query(WEBSOCKET_QUERY_PARAMETER)
        )
        if check.refusal is not None:
            raise self._refused_key(exchange, check.refusal)
        socket = await exchange.accept_websocket(subprotocol=check.subprotocol)
        session = InferenceSocketSession(
            socket,
            forwarder=self._forwarder,
            mode=self._cluster,
            shutdown=self._shutdown,
            max_tokens_limit=self._max_tokens_limit,
            max_requests_in_flight=self._max_requests_per_socket,
            stream_gather_interval=self._stream_gather_interval,
        )
        await session.serve()


async def _answer_preflight(exchange: Exchange, cors_headers: list[tuple[str, str]]) -> None:
    await exchange.respond(200, b"", [*PREFLIGHT_HEADERS, *cors_headers])


def _answer_options(method: str) -> Handler:
    async def answer(exchange: Exchange, cors_headers: list[tuple[str, str]]) -> None:
        await exchange.respond(200, b"", [("allow", f"{method}, OPTIONS"), *cors_headers])

    return answer


NDJSON_HEADERS = [("content-type", "application/json"), ("cache-control", "no-cache")]


async def _stream_ndjson(exchange: Exchange, cors_headers: list[tuple[str, str]], request_id: str, work: StreamWork) -> None:
    """HTTP 200 streaming one JSON message per line, produced by `work` in a task of this route."""
    send, receive = trio.open_memory_channel[InferenceClientBoundMessage](STREAM_BUFFER)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(emit_all_into, send, request_id, functools.partial(work, put_into(send), send_now_into(send)))
        await exchange.start_stream(200, [*NDJSON_HEADERS, *cors_headers])
        async with receive:
            async for message in receive:
                lines = queued_texts(message, receive, MAX_LINES_PER_CHUNK)
                await exchange.send_chunk("\n".join([*lines, ""]).encode())
        await exchange.end_stream()
