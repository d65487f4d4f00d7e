"""The balancer's requests on one link: one task per generation or embedding request.

Each request task counts in the agent's `slots_processing` from receipt to completion and
forwards every result as a Response envelope until the terminal one. A generation's results
go into the link's queue straight from the engine's scheduler while the task waits with nothing
queued (`GenerationStream.hand_results_to`), so one engine step costs no wake-up per request;
the task forwards only what the link's queue had no room for. Request tasks live in the
link's nursery: when the link drops they are cancelled, and leaving the engine stream frees
their slot at the next step boundary.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import attrs
import trio

from paddler_trio.agent.engine_holder import EngineHolder
from paddler_trio.agent.status import AgentStatus
from paddler_trio.engine.engine import Engine, GenerationStream
from paddler_trio.engine.engine_errors import InvalidRequest
from paddler_trio.protocol import (
    AgentRequest,
    BalancerBoundMessage,
    ChatTemplateOverrideResponse,
    ContinueFromConversationHistoryParams,
    ContinueFromRawPromptParams,
    EmbeddingDone,
    EmbeddingProduced,
    EmbeddingResult,
    ErrorDetails,
    ErrorEnvelope,
    GeneratedTokenResult,
    GenerateEmbeddingBatchParams,
    GetChatTemplateOverrideRequest,
    GetModelMetadataRequest,
    ModelMetadata,
    ModelMetadataResponse,
    NoEmbeddingsProduced,
    RequestEnvelope,
    ResponseEnvelope,
    is_terminal,
)
from paddler_trio.protocol.slot_race import slots_taken_error

_logger = logging.getLogger(__name__)

Send = Callable[[BalancerBoundMessage], Awaitable[None]]
# Queues a message on the link without waiting; False when the link's queue is full.
SendNow = Callable[[BalancerBoundMessage], bool]

# How long a request that arrives while the model is being swapped waits for the new one
# (less than the balancer's default inference item timeout of 30 s).
SWAP_WAIT = 25.0
NO_ENGINE_DESCRIPTION = "No model is loaded on this agent (it is loading, reloading, or has no model configured)"


@attrs.define(eq=False)
class _InFlightRequest:
    """A request being served; `stop()` may come before its stream exists."""

    stop_requested: bool = False
    stream: GenerationStream | None = None
    # The terminal result went onto the link straight from the scheduler.
    ended: bool = False

    def stop(self) -> None:
        self.stop_requested = True
        if self.stream is not None:
            self.stream.stop()

    def attach(self, stream: GenerationStream) -> None:
        self.stream = stream
        if self.stop_requested:
            stream.stop()


class RequestHandling:
    """Serves the requests of one link; `send` and `send_now` put a message on that link, and
    `link_sent` tells whether the link has written all it was given."""

    def __init__(
        self, engines: EngineHolder, status: AgentStatus, send: Send, send_now: SendNow, link_sent: Callable[[], bool]
    ) -> None:
        self._engines = engines
        self._status = status
        self._send = send
        self._send_now = send_now
        self._link_sent = link_sent
        self._in_flight: dict[str, _InFlightRequest] = {}

    async def handle(self, nursery: trio.Nursery, envelope: RequestEnvelope[AgentRequest]) -> None:
        request_id, request = envelope.id, envelope.request
        if isinstance(request, GetChatTemplateOverrideRequest):
            await self._respond(request_id, ChatTemplateOverrideResponse(self._status.chat_template_override))
            return
        if isinstance(request, GetModelMetadataRequest):
            engine = self._engines.engine
            metadata = ModelMetadata(dict(engine.metadata)) if engine is not None else None
            await self._respond(request_id, ModelMetadataResponse(metadata))
            return
        if request_id in self._in_flight:
            _logger.warning("request id %r is already in flight; refusing the duplicate", request_id)
            await self._error(request_id, 400, f"Request id {request_id!r} is already in flight on this agent")
            return
        if self._status.every_slot_taken:
            # Another balancer's request took the last slot first (protocol/slot_race.py).
            _logger.info("request %r came when every slot was taken: refused, its balancer dispatches it again", request_id)
            await self._send(ErrorEnvelope(request_id=request_id, error=slots_taken_error()))
            return
        in_flight = _InFlightRequest()
        self._in_flight[request_id] = in_flight
        # Counted from receipt, before the task starts, so a drain never misses it.
        self._status.take_slot()
        try:
            nursery.start_soon(self._serve, request_id, request, in_flight)
        except BaseException:
            del self._in_flight[request_id]
            self._status.release_slot()
            raise

    @property
    def in_flight(self) -> int:
        """Requests of this link being served."""
        return len(self._in_flight)

    def stop_responding_to(self, request_id: str) -> None:
        in_flight = self._in_flight.get(request_id)
        if in_flight is None:
            _logger.debug("StopRespondingTo for %r, which is not in flight here: ignored", request_id)
            return
        in_flight.stop()

    async def _serve(
        self,
        request_id: str,
        request: AgentRequest,
        in_flight: _InFlightRequest,
    ) -> None:
        try:
            engine = self._engines.engine or await self._engines.wait_for_engine(SWAP_WAIT)
            if engine is None:
                await self._error(request_id, 503, NO_ENGINE_DESCRIPTION)
                return
            try:
                if isinstance(request, GenerateEmbeddingBatchParams):
                    await self._serve_embeddings(engine, request_id, request, in_flight)
                else:
                    await self._serve_generation(engine, request_id, request, in_flight)
            except InvalidRequest as error:
                await self._error(request_id, 400, str(error))
            except Exception:
                _logger.exception("request %r failed", request_id)
                await self._error(request_id, 500, "The agent failed while serving this request (see its log)")
        finally:
            del self._in_flight[request_id]
            self._status.release_slot()

    async def _serve_generation(
        self,
        engine: Engine,
        request_id: str,
        request: ContinueFromRawPromptParams | ContinueFromConversationHistoryParams,
        in_flight: _InFlightRequest,
    ) -> None:
        if isinstance(request, ContinueFromRawPromptParams):
            opened = engine.continue_from_raw_prompt(request)
        else:
            opened = engine.continue_from_conversation_history(request)
        async with opened as stream:
            in_flight.attach(stream)

            def take(result: GeneratedTokenResult) -> bool:
                if not self._send_now(ResponseEnvelope(generated_by=None, request_id=request_id, response=result)):
                    return False
                in_flight.ended = is_terminal(result)
                return True

            stream.hand_results_to(take, sent=self._link_sent)
            if await self._forward(request_id, stream) or in_flight.ended:
                return
        _logger.error("the generation of request %r ended without a final result", request_id)
        await self._error(request_id, 500, "The generation ended without a final result")

    async def _serve_embeddings(
        self, engine: Engine, request_id: str, request: GenerateEmbeddingBatchParams, in_flight: _InFlightRequest
    ) -> None:
        produced = 0
        async with engine.generate_embedding_batch(request) as results:
            async for result in results:
                await self._respond(request_id, result)
                if is_terminal(result):
                    return
                if isinstance(result, EmbeddingProduced):
                    produced += 1
                if in_flight.stop_requested:
                    break
            else:
                _logger.error("the embedding batch of request %r ended without a final result", request_id)
                await self._error(request_id, 500, "The embedding batch ended without a final result")
                return
        # Stopped between embeddings: end the stream the way Paddler's stop signal does.
        final: EmbeddingResult = EmbeddingDone() if produced else NoEmbeddingsProduced()
        await self._respond(request_id, final)

    async def _forward(self, request_id: str, results: AsyncIterator[GeneratedTokenResult]) -> bool:
        """Send every result up to the terminal one; False if the stream ended without one."""
        async for result in results:
            await self._respond(request_id, result)
            if is_terminal(result):
                return True
        return False

    async def _respond(self, request_id: str, response: object) -> None:
        await self._send(ResponseEnvelope(generated_by=None, request_id=request_id, response=response))

    async def _error(self, request_id: str, code: int, description: str) -> None:
        await self._send(ErrorEnvelope(request_id=request_id, error=ErrorDetails(code=code, description=description)))
