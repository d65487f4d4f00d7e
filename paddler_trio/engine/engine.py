"""The engine's front door: load a model once, then run generations and embeddings on it.

    async with Engine.open(EngineSettings(model_path, slots=4)) as engine:
        async with engine.continue_from_raw_prompt(params) as stream:
            async for result in stream:      # protocol GeneratedTokenResult values
                ...

Leaving a stream's `async with` early (break, exception, Trio cancellation) cancels the
request: its slot is free at the next step boundary. `stream.stop()` ends it gracefully
with `Done` and the usage so far, as Paddler's StopRespondingTo does.
"""

from __future__ import annotations

import functools
import json
import logging
import resource
from collections.abc import AsyncIterator, Callable
from typing import Any
from contextlib import asynccontextmanager

import attrs
import trio

from paddler_trio.engine.chat_template import ChatTemplate, ChatTemplateRenderError
from paddler_trio.engine.context import DecodingContext
from paddler_trio.engine.embeddings import embed_pack, pack_documents, split_oversized
from paddler_trio.engine.engine_errors import (
    EngineError,
    InvalidEngineSettings,
    InvalidRequest,
    UnableToFindChatTemplate,
)
from paddler_trio.engine.image_input import ImageRejected, load_images
from paddler_trio.engine.model import LoadedModel
from paddler_trio.engine.multimodal import Projector
from paddler_trio.engine.request_rejection import RequestRejected
from paddler_trio.engine.sampling import SamplingSettings, gbnf_for_constraint
from paddler_trio.engine.scheduler import OUTPUT_CHANNEL_SIZE, Scheduler
from paddler_trio.engine.slot import Generation, TextGenerationRequest
from paddler_trio.engine.state_cache import MIB, StateCache, StateCacheFigures
from paddler_trio.engine.token_classifier import SectionMarkers
from paddler_trio.engine.tool_calls import ToolCallParser
from paddler_trio.protocol import (
    ChatTemplateError,
    ContinueFromConversationHistoryParams,
    ContinueFromRawPromptParams,
    ConversationMessage,
    EmbeddingDone,
    EmbeddingError,
    EmbeddingProduced,
    EmbeddingResult,
    EmbeddingsDisabled,
    GeneratedTokenResult,
    GenerateEmbeddingBatchParams,
    GrammarIncompatibleWithThinking,
    ImageDecodingFailed,
    ImageUrlPart,
    InferenceParameters,
    MultimodalNotSupported,
    NoEmbeddingsProduced,
    SamplerError,
    TextPart,
    TokenGenerationDisabled,
    unstructure,
)

_logger = logging.getLogger(__name__)

# Paddler's agent words it so, after the agent's name (the balancer's own refusal is worded otherwise).
TOKEN_GENERATION_DISABLED_MESSAGE = "token generation is disabled because this agent is running in embeddings-only mode"


@attrs.frozen
class EngineSettings:
    model_path: str
    slots: int
    inference_parameters: InferenceParameters = attrs.field(factory=InferenceParameters)
    chat_template_override: str | None = None
    n_threads: int | None = None
    # Let a llama.cpp built with AMX use its AMX weight buffers (engine/amx_guard.py).
    allow_amx: bool = False
    agent_name: str | None = None  # named in the messages of refused requests, as Paddler's agent does
    # Host memory for sequence states saved when their slot is reused (engine/state_cache.py); 0: none.
    cache_ram_mib: int = 0
    multimodal_projection_path: str | None = None  # an mmproj GGUF for this model: images in conversations

    def check(self) -> None:
        if self.slots < 1:
            raise InvalidEngineSettings(f"slots must be at least 1 (got {self.slots})")
        if self.cache_ram_mib < 0:
            raise InvalidEngineSettings(f"cache_ram_mib must be 0 (no prompt state cache) or more (got {self.cache_ram_mib})")
        problems = self.inference_parameters.validate()
        if self.inference_parameters.context_size < self.slots:
            problems.append(
                f"context_size {self.inference_parameters.context_size} is smaller than the {self.slots} slots"
            )
        if problems:
            raise InvalidEngineSettings("invalid inference parameters: " + "; ".join(problems))


class GenerationStream:
    """The results of one generation; iterate it inside the `async with` that opened it."""

    def __init__(
        self,
        receive: trio.MemoryReceiveChannel[GeneratedTokenResult],
        scheduler: Scheduler | None = None,
        generation: Generation | None = None,
    ) -> None:
        self._receive = receive
        self._scheduler = scheduler
        self._generation = generation

    def stop(self) -> None:
        """Finish at the next step boundary with Done and the usage so far."""
        if self._scheduler is not None and self._generation is not None:
            self._scheduler.stop(self._generation)

    def hand_results_to(self, taker: Callable[[GeneratedTokenResult], bool], *, sent: Callable[[], bool]) -> None:
        """Offer each result to `taker` first, from the scheduler's task, while this stream's
        reader waits with nothing queued: a result it takes (True) never reaches the iterator,
        and one it declines is iterated as usual, as is every result after it until the reader
        waits again, so the two ways never reorder results. The iterator ends after a terminal
        result that `taker` took. Saves the reader a wake-up per result (the agent puts them
        straight into its link's queue).

        `sent()` tells whether what `taker` took has left the process (the link has written it):
        the hand-off between two steps waits for that as it waits for a reader, and the sender
        says when it has (`Engine.results_sent`), so that its work is not done beside the next
        decode."""
        if self._generation is not None:
            self._generation.taker = taker
            self._generation.taken_sent = sent

    def __aiter__(self) -> "GenerationStream":
        return self

    async def __anext__(self) -> GeneratedTokenResult:
        if self._scheduler is not None and not self._receive.statistics().current_buffer_used:
            self._scheduler.reader_waits()  # the hand-off between two steps waits for this
        try:
            result = await self._receive.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
        if self._scheduler is not None and self._generation is not None:
            self._scheduler.consumer_made_room(self._generation)
        return result


def _single_result_stream(result: GeneratedTokenResult) -> GenerationStream:
    send, receive = trio.open_memory_channel[GeneratedTokenResult](1)
    send.send_nowait(result)
    send.close()
    return GenerationStream(receive)


# llama.cpp would take a NUL byte; Paddler's agent (C strings) refuses text with one, and so do
# we: in a prompt or a document it is nearly always binary data sent by mistake.
NUL = "\x00"


def _tokenizable(prompt: str) -> str:
    if NUL in prompt:
        raise RequestRejected(SamplerError("failed to tokenize prompt: it contains a NUL byte"))
    return prompt


def _message_text(content: object, image_marker: str) -> tuple[str, list[str]]:
    """Flatten message content to text, with `image_marker` where each image part is; and the
    URLs of those images, in order."""
    if isinstance(content, str):
        return content, []
    pieces: list[str] = []
    image_urls: list[str] = []
    for part in content:  # type: ignore[attr-defined]
        if isinstance(part, TextPart):
            pieces.append(part.text)
        elif isinstance(part, ImageUrlPart):
            pieces.append(image_marker)
            image_urls.append(part.image_url.url)
    return "".join(pieces), image_urls


def _template_message(message: ConversationMessage, text: str) -> dict[str, Any]:
    """A message as chat templates read it; tool-call arguments as an object, as templates `tojson` them."""
    rendered: dict[str, Any] = {"role": message.role, "content": text}
    if message.tool_calls is not None:
        rendered["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.function.name, "arguments": _arguments_value(call.function.arguments)},
            }
            for call in message.tool_calls
        ]
    if message.tool_call_id is not None:
        rendered["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        rendered["name"] = message.name
    return rendered


def _arguments_value(arguments: str) -> Any:
    """JSON-encoded arguments decoded; text that is not JSON stays text."""
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


class Engine:
    def __init__(
        self,
        settings: EngineSettings,
        model: LoadedModel,
        context: DecodingContext,
        scheduler: Scheduler,
        projector: Projector | None = None,
    ) -> None:
        self.settings = settings
        self.model = model
        self.context = context
        self.scheduler = scheduler
        self.projector = projector
        # Longest side of an image before the projector takes it; the agent changes it without a reload.
        self.image_resize_to_fit = settings.inference_parameters.image_resize_to_fit
        self._markers = SectionMarkers.of_model(model)
        self.chat_template: ChatTemplate | None = None
        self.chat_template_problem: EngineError | None = None
        source = settings.chat_template_override or model.chat_template
        if source is None:
            self.chat_template_problem = UnableToFindChatTemplate(settings.model_path)
        else:
            try:
                self.chat_template = ChatTemplate(source, bos_token=model.bos_text, eos_token=model.eos_text)
            except EngineError as problem:
                self.chat_template_problem = problem

    def results_sent(self) -> None:
        """What the streams' takers took has been sent (see `GenerationStream.hand_results_to`)."""
        self.scheduler.reader_waits()

    async def wait_for_step_end(self) -> None:
        """Return when the engine is between two steps (see `Scheduler.wait_for_step_end`)."""
        await self.scheduler.wait_for_step_end()

    @property
    def state_cache_figures(self) -> StateCacheFigures:
        """What the prompt state cache holds now (read from any thread)."""
        return self.scheduler.state_cache.figures

    @property
    def embeddings_mode(self) -> bool:
        return self.settings.inference_parameters.enable_embeddings

    @property
    def metadata(self) -> dict[str, str]:
        return self.model.metadata

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: EngineSettings) -> AsyncIterator["Engine"]:
        """Load the model and create the context (in a worker thread), run the scheduler."""
        settings.check()
        parameters = settings.inference_parameters
        model = await trio.to_thread.run_sync(
            functools.partial(
                LoadedModel.load, settings.model_path, n_gpu_layers=parameters.n_gpu_layers, allow_amx=settings.allow_amx
            )
        )
        context: DecodingContext | None = None
        projector: Projector | None = None
        try:
            context = await trio.to_thread.run_sync(
                functools.partial(DecodingContext, model, parameters, slots=settings.slots, n_threads=settings.n_threads)
            )
            await trio.to_thread.run_sync(context.warm_up)
            if settings.multimodal_projection_path is not None:
                projector = await trio.to_thread.run_sync(
                    functools.partial(
                        Projector.load,
                        settings.multimodal_projection_path,
                        model,
                        threads=context.threads,
                        use_gpu=not LoadedModel.decodes_on_cpu(parameters.n_gpu_layers),
                        embeddings=parameters.enable_embeddings,
                    )
                )
            _logger.info(
                "engine ready: %d slots x %d tokens, n_batch %d, %d threads, %s mode, peak RSS %.0f MiB",
                settings.slots,
                context.tokens_per_slot,
                context.n_batch,
                context.threads,
                "embeddings" if parameters.enable_embeddings else "generation",
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            )
            scheduler = Scheduler(
                model,
                context,
                hand_off_every_step=LoadedModel.decodes_on_cpu(parameters.n_gpu_layers),
                # Embeddings keep no sequences between requests.
                state_cache=StateCache(0 if parameters.enable_embeddings else settings.cache_ram_mib * MIB),
                projector=projector,
            )
            engine = cls(settings, model, context, scheduler, projector)
            async with trio.open_nursery() as nursery:
                await nursery.start(scheduler.run)
                try:
                    yield engine
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            if projector is not None:
                await trio.to_thread.run_sync(projector.close)
            if context is not None:
                await trio.to_thread.run_sync(context.close)
            await trio.to_thread.run_sync(model.close)

    # --- token generation ------------------------------------------------------------

    @asynccontextmanager
    async def continue_from_raw_prompt(
        self, params: ContinueFromRawPromptParams, *, ignore_eos: bool = False
    ) -> AsyncIterator[GenerationStream]:
        """`ignore_eos` is for benchmarks: generate exactly max_tokens tokens."""
        try:
            request = attrs.evolve(self._raw_prompt_request(params), ignore_eos=ignore_eos)
        except RequestRejected as rejection:
            yield _single_result_stream(rejection.result)
            return
        async with self._run(request) as stream:
            yield stream

    @asynccontextmanager
    async def continue_from_conversation_history(
        self, params: ContinueFromConversationHistoryParams
    ) -> AsyncIterator[GenerationStream]:
        try:
            request, image_urls = self._conversation_request(params)
            if image_urls:
                images = await load_images(image_urls, self.image_resize_to_fit)
                request = attrs.evolve(request, images=images)
        except RequestRejected as rejection:
            yield _single_result_stream(rejection.result)
            return
        except ImageRejected as rejection:
            yield _single_result_stream(ImageDecodingFailed(str(rejection)))
            return
        async with self._run(request) as stream:
            yield stream

    @asynccontextmanager
    async def _run(self, request: TextGenerationRequest) -> AsyncIterator[GenerationStream]:
        send, receive = trio.open_memory_channel[GeneratedTokenResult](OUTPUT_CHANNEL_SIZE)
        generation = Generation(request=request, output=send)
        self.scheduler.submit(generation)
        try:
            yield GenerationStream(receive, self.scheduler, generation)
        finally:
            if not generation.finished or generation.outbox:
                self.scheduler.cancel(generation)
            receive.close()

    def _check_generation_allowed(self, max_tokens: int) -> None:
        if max_tokens < 0:
            raise InvalidRequest(f"max_tokens must be 0 or more (got {max_tokens})")
        if self.embeddings_mode:
            name = self.settings.agent_name
            message = f"{name}: {TOKEN_GENERATION_DISABLED_MESSAGE}" if name else TOKEN_GENERATION_DISABLED_MESSAGE
            raise RequestRejected(TokenGenerationDisabled(message))

    def _sampling(self, params: ContinueFromRawPromptParams | ContinueFromConversationHistoryParams) -> SamplingSettings:
        return SamplingSettings.from_parameters(
            self.settings.inference_parameters,
            temperature=params.temperature,
            top_k=params.top_k,
            top_p=params.top_p,
            min_p=params.min_p,
            seed=params.seed,
        )

    def _raw_prompt_request(self, params: ContinueFromRawPromptParams) -> TextGenerationRequest:
        self._check_generation_allowed(params.max_tokens)
        return TextGenerationRequest(
            prompt=_tokenizable(params.raw_prompt),
            max_tokens=params.max_tokens,
            sampling=self._sampling(params),
            grammar=gbnf_for_constraint(params.grammar) if params.grammar is not None else None,
            stop=tuple(params.stop or ()),
        )

    def render_conversation(self, params: ContinueFromConversationHistoryParams) -> str:
        """The prompt text the model sees for a conversation (raises RequestRejected); an image
        part stands as the projector's marker."""
        return self._render_conversation(params)[0]

    def _render_conversation(self, params: ContinueFromConversationHistoryParams) -> tuple[str, tuple[str, ...]]:
        """The prompt text and the URLs of the images its markers stand for, in order."""
        if self.chat_template is None:
            problem = self.chat_template_problem
            raise RequestRejected(ChatTemplateError(str(problem) if problem else "no chat template"))
        marker = self.projector.marker if self.projector is not None else ""
        messages = []
        image_urls: list[str] = []
        for message in params.conversation_history:
            text, message_image_urls = _message_text(message.content, marker)
            if message_image_urls and self.projector is None:
                raise RequestRejected(
                    MultimodalNotSupported("this agent's model has no multimodal projection; send text only")
                )
            image_urls.extend(message_image_urls)
            messages.append(_template_message(message, text))
        tools = [unstructure(tool) for tool in params.tools] if params.tools else None
        try:
            prompt = self.chat_template.render(
                messages,
                add_generation_prompt=params.add_generation_prompt,
                enable_thinking=params.enable_thinking,
                tools=tools,
            )
        except ChatTemplateRenderError as error:
            raise RequestRejected(ChatTemplateError(str(error))) from error
        return prompt, tuple(image_urls)

    def _conversation_request(
        self, params: ContinueFromConversationHistoryParams
    ) -> tuple[TextGenerationRequest, tuple[str, ...]]:
        """The request (its images still to load) and the URLs of its images."""
        self._check_generation_allowed(params.max_tokens)
        if params.grammar is not None and params.enable_thinking:
            raise RequestRejected(
                GrammarIncompatibleWithThinking("Grammar constraints are incompatible with thinking mode")
            )
        grammar = gbnf_for_constraint(params.grammar) if params.grammar is not None else None
        parser = ToolCallParser(tuple(params.tools)) if params.parse_tool_calls and params.tools else None
        prompt, image_urls = self._render_conversation(params)
        request = TextGenerationRequest(
            prompt=_tokenizable(prompt),
            max_tokens=params.max_tokens,
            sampling=self._sampling(params),
            grammar=grammar,
            stop=tuple(params.stop or ()),
            tool_call_parser=parser,
            starts_in_reasoning=params.enable_thinking and self._markers.prompt_opens_reasoning(prompt),
        )
        return request, image_urls

    # --- embeddings ------------------------------------------------------------------

    @asynccontextmanager
    async def generate_embedding_batch(
        self, params: GenerateEmbeddingBatchParams
    ) -> AsyncIterator[AsyncIterator[EmbeddingResult]]:
        results = self._embedding_results(params)
        try:
            yield results
        finally:
            await results.aclose()

    async def _embedding_results(self, params: GenerateEmbeddingBatchParams) -> AsyncIterator[EmbeddingResult]:
        if not self.embeddings_mode:
            yield EmbeddingsDisabled()
            return
        limiter = self.scheduler.limiter
        documents = list(params.input_batch)
        for document in documents:
            if NUL in document.content:
                yield EmbeddingError(f'failed to tokenize document "{document.id}": it contains a NUL byte')
                return
        tokenized = await trio.to_thread.run_sync(
            lambda: [tuple(self.model.tokenize(document.content, add_special=True)) for document in documents],
            limiter=limiter,
        )
        fitting, oversized = split_oversized(documents, tokenized, self.context.n_batch)
        for problem in oversized:
            yield problem
        produced = 0
        pooling = self.settings.inference_parameters.pooling_type
        for pack in pack_documents(fitting, n_batch=self.context.n_batch, max_sequences=self.context.slots):
            try:
                embeddings = await trio.to_thread.run_sync(
                    embed_pack, self.context, pack, params.normalization_method, pooling, limiter=limiter
                )
            except RuntimeError as error:
                yield EmbeddingError(str(error))
                return
            for embedding in embeddings:
                produced += 1
                yield EmbeddingProduced(embedding)
        yield EmbeddingDone() if produced else NoEmbeddingsProduced()
