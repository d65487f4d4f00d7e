"""The continuous-batching loop over one llama_context.

Each step, at a step boundary (never inside a decode):
1. apply cancellations (slot freed, its KV dropped) and explicit stops (Done with usage so far);
2. admit every waiting request into a free slot, reusing the longest cached token prefix: a free
   slot's, or one restored from the prompt state cache (`state_cache.py`), into which a slot's
   conversation is saved before a request with another prefix overwrites it; then encode and
   decode at most one prompt image into its slot (engine/multimodal.py);
3. assemble one batch: one token per generating slot first, then prompt chunks of
   prefilling slots up to `n_batch` (chunked prefill, several slots per batch);
4. one `llama_decode`; then per slot with logits: sample, detokenise, check stops;
5. back in Trio, hand each generation's events to its output channel.

Hand-off: after a step, the next step waits (at most `HANDOFF_LIMIT`) until every reader of the
step's events has handed them on and waits for the next ones (each `GenerationStream` says so
as it goes back to waiting, `reader_waits`), and what a stream's taker took has been sent (the
sender says so, `Engine.results_sent`), i.e. until the tokens are on their way to the clients. Only the engine's own readers are waited for, not the rest of the process (a balancer
in the same process, in `quickstart`, runs beside the next step as it would in its own). When the decode runs on llama.cpp's CPU threads this happens after every step: work
beside a running decode takes a core from one of its threads, and the others wait for it at the
next barrier, so it costs the decode several times its own CPU time. Measured on 2 cores (Gemma
270M, 4 slots, medians of five or six runs): handing off between steps instead of beside them
raised tokens/s by 2-3 % with 2 threads and about 5 % with 1 thread, for the engine alone and
through a balancer and an agent alike. When the
decode runs on a GPU, the CPU is free while it runs, and a hand-off between steps would only add
its time to every step: there only steps that sampled a first token wait, so that first tokens
reach their clients without waiting for a core. Other work for the same link (the agent's status
snapshots) waits for a step's end (`wait_for_step_end`), so that it too goes out in the hand-off.

Steps 1-4 run in one worker-thread call behind a CapacityLimiter(1): the context is only
ever touched by one thread, and the Trio loop keeps serving while a step runs. A slot whose
consumer is not reading is paused (left out of batches) until it drains, so one slow
client holds back nothing but its own stream.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import attrs
import numpy as np
import trio

from paddler_trio.engine.context import DecodingContext
from paddler_trio.engine.model import LoadedModel
from paddler_trio.engine.multimodal import MultimodalPrompt, Projector
from paddler_trio.engine.request_rejection import RequestRejected
from paddler_trio.engine.sampling import SamplerChain
from paddler_trio.engine.slot import Generation, Slot, TextGenerationRequest
from paddler_trio.engine.state_cache import USEFUL_PREFIX_TOKENS, SavedState, StateCache
from paddler_trio.engine.token_classifier import (
    Section,
    SectionMarkers,
    TokenClassifier,
)
from paddler_trio.engine.vector_sampling import SlotSampler, VectorSampler, sample_step
from paddler_trio.protocol import GeneratedTokenResult, MultimodalNotSupported, SamplerError
from paddler_trio.queued_messages import drainer_is_idle

_logger = logging.getLogger(__name__)

# Events a slot may have waiting for its consumer before the slot stops generating.
OUTBOX_PAUSE_THRESHOLD = 32
OUTPUT_CHANNEL_SIZE = 64

KV_PRESSURE_MESSAGE = "Request evicted due to KV cache pressure"

# Longest wait for a step's hand-off before the next step starts anyway (seconds): a reader that
# does not come back to its stream in that time (a slow client's writer) is not waited for.
HANDOFF_LIMIT = 0.003


@attrs.define(eq=False)
class _StepInput:
    admissions: list[Generation]
    cancellations: list[Generation]
    stops: list[Generation]


class Scheduler:
    def __init__(
        self,
        model: LoadedModel,
        context: DecodingContext,
        *,
        hand_off_every_step: bool,
        state_cache: StateCache | None = None,
        projector: Projector | None = None,
    ) -> None:
        self._model = model
        self._projector = projector
        self._hand_off_every_step = hand_off_every_step
        self._context = context
        self._markers = SectionMarkers.of_model(model)
        self._slots = [Slot(index) for index in range(context.slots)]
        self.state_cache = state_cache or StateCache(0)
        # Counts slot releases: a slot's `last_used`.
        self._release_clock = 0
        self._limiter = trio.CapacityLimiter(1)
        self._admissions: list[Generation] = []
        self._cancellations: list[Generation] = []
        self._stops: list[Generation] = []
        self._live: list[Generation] = []
        self._wake = trio.Event()
        # Set when a reader of some stream goes back to waiting (the hand-off re-checks then).
        self._reader_waits = trio.Event()
        # Steps started so far; a cancellation or stop is applied by the next step started.
        self.steps_started = 0
        # Set by the worker thread when a step samples some request's first token.
        self._sampled_first_token = False
        # Set as the step running in the worker thread ends; None while no step runs.
        self._step_over: trio.Event | None = None

    @property
    def limiter(self) -> trio.CapacityLimiter:
        """The one-thread-at-a-time gate of this context (embeddings use it too)."""
        return self._limiter

    @property
    def slots_busy(self) -> int:
        return sum(1 for slot in self._slots if slot.generation is not None)

    # --- Trio side -------------------------------------------------------------------

    def submit(self, generation: Generation) -> None:
        self._admissions.append(generation)
        self._live.append(generation)
        self._poke()

    def stop(self, generation: Generation) -> None:
        if not generation.finished and not generation.stop_requested:
            generation.stop_requested = True
            self._stops.append(generation)
            self._poke()

    def cancel(self, generation: Generation) -> None:
        if not generation.cancelled:
            generation.cancelled = True
            self._cancellations.append(generation)
            self._poke()

    async def wait_for_step_end(self) -> None:
        """Return when no step runs: at once, or when the running one ends. What a task queues
        for the link then goes out in the hand-off after that step (which waits for it to be
        sent), not beside the next decode."""
        if self._step_over is not None:
            await self._step_over.wait()

    def reader_waits(self) -> None:
        """A stream's reader has taken everything queued for it and waits for more."""
        self._reader_waits.set()

    def consumer_made_room(self, generation: Generation) -> None:
        if generation.outbox:
            self._poke()

    def _poke(self) -> None:
        self._wake.set()

    def _has_work(self) -> bool:
        if self._admissions or self._cancellations or self._stops:
            return True
        return any(
            slot.generation is not None and len(slot.generation.outbox) < OUTBOX_PAUSE_THRESHOLD
            for slot in self._slots
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                self._deliver()
                if not self._has_work():
                    await self._wake.wait()
                    self._wake = trio.Event()
                    continue
                step = _StepInput(self._admissions, self._cancellations, self._stops)
                self._admissions, self._cancellations, self._stops = [], [], []
                self.steps_started += 1
                self._sampled_first_token = False
                step_over = self._step_over = trio.Event()
                try:
                    await trio.to_thread.run_sync(self._step, step, limiter=self._limiter)
                finally:
                    self._step_over = None
                    step_over.set()
                if self._hand_off_every_step or self._sampled_first_token:
                    await self._hand_off()
        finally:
            for generation in self._live:
                generation.output.close()
            self._live.clear()

    async def _hand_off(self) -> None:
        handed = [generation for generation in self._live if generation.outbox]
        self._deliver()
        with trio.move_on_after(HANDOFF_LIMIT):
            while not all(_reader_caught_up(generation) for generation in handed):
                self._reader_waits = trio.Event()
                await self._reader_waits.wait()

    def _deliver(self) -> None:
        still_live: list[Generation] = []
        for generation in self._live:
            if generation.cancelled:
                generation.output.close()
                if generation.slot is not None and not generation.finished:
                    still_live.append(generation)  # the worker thread still has to free its slot
                continue
            outbox = generation.outbox
            taker = generation.taker
            try:
                while outbox:
                    if taker is None or not drainer_is_idle(generation.output) or not taker(outbox[0]):
                        generation.output.send_nowait(outbox[0])
                    outbox.popleft()
            except trio.WouldBlock:
                pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                outbox.clear()
                self.cancel(generation)
            if generation.finished and not outbox:
                generation.output.close()
            else:
                still_live.append(generation)
        self._live = still_live

    # --- worker thread side ----------------------------------------------------------

    def _step(self, step: _StepInput) -> None:
        cancelled = set(step.cancellations)
        for generation in step.cancellations:
            self._drop(generation)
        for generation in step.stops:
            if generation in cancelled or generation.finished:
                continue
            if generation.slot is None:
                generation.outbox.extend(generation.stop_now())
            else:
                generation.outbox.extend(generation.stop_now())
                self._release(generation)
        for generation in step.admissions:
            if generation in cancelled or generation.finished:
                continue
            self._admit(generation)
        self._evaluate_next_image()
        self._decode_and_sample()

    def _admit(self, generation: Generation) -> None:
        request = generation.request
        free_slots = [slot for slot in self._slots if slot.generation is None]
        if not free_slots:
            self._reject(generation, SamplerError("no available sequence slots, all slots are busy"))
            return
        if request.images:
            try:
                generation.multimodal = self._tokenize_with_images(request)
            except RequestRejected as rejection:
                self._reject(generation, rejection.result)
                return
            prompt_tokens = generation.multimodal.tokens
        else:
            prompt_tokens = self._model.tokenize(request.prompt, add_special=True)
        if not prompt_tokens:
            self._reject(generation, SamplerError("the prompt is empty: there is nothing to continue from"))
            return
        room = self._context.tokens_per_slot
        if len(prompt_tokens) >= room:
            self._reject(
                generation,
                SamplerError(
                    f"the prompt has {len(prompt_tokens)} tokens but a slot holds at most {room} "
                    f"(context_size / slots); shorten the prompt or raise context_size"
                ),
            )
            return
        slot, common, saved_state = self._choose_slot(free_slots, prompt_tokens)
        if generation.multimodal is not None:
            common = generation.multimodal.image_start_before(common)  # an image is evaluated whole
        sampler: SlotSampler
        if request.grammar is None:
            sampler = VectorSampler(request.sampling, n_vocab=self._model.n_vocab, context_tokens=room)
        else:
            # Grammars need llama.cpp's own sampler chain (the grammar filters the candidates first).
            try:
                sampler = SamplerChain(self._model, request.sampling, request.grammar, context_tokens=room)
            except RequestRejected as rejection:
                self._reject(generation, rejection.result)
                return
        reused = self._fill_slot(slot, common, saved_state, prompt_tokens)
        generation.slot = slot
        slot.generation = generation
        generation.sampler = sampler
        generation.prompt_tokens = prompt_tokens
        generation.prefilled = reused
        multimodal = generation.multimodal
        generation.usage = attrs.evolve(
            generation.usage,
            prompt_tokens=len(prompt_tokens) if multimodal is None else multimodal.prompt_tokens,
            cached_prompt_tokens=reused,
            input_image_tokens=0 if multimodal is None else multimodal.image_tokens,
        )
        start = Section.REASONING if request.starts_in_reasoning else Section.CONTENT
        generation.classifier = TokenClassifier(self._markers, start)
        if request.max_tokens == 0:
            generation.outbox.extend(generation.stop_now())
            self._release(generation)

    def _choose_slot(
        self, free_slots: list[Slot], prompt_tokens: list[int]
    ) -> tuple[Slot, int, SavedState | None]:
        """The free slot sharing the longest useful token prefix with the prompt (ties, and none:
        the least recently used one) and the length it shares; or, when a saved state shares
        `USEFUL_PREFIX_TOKENS` more, the least recently used free slot, that state's shared length
        and the state, to be restored into the slot."""
        best, best_common, best_key = free_slots[0], 0, (-1, 0)
        for slot in free_slots:
            common = _common_prefix_length(slot.cached_tokens, prompt_tokens)
            useful = common if common >= USEFUL_PREFIX_TOKENS or common == len(slot.cached_tokens) else 0
            key = (useful, -_recency(slot))
            if key > best_key:
                best, best_common, best_key = slot, common, key
        if self.state_cache.enabled:
            state, state_common = self.state_cache.best_match(np.asarray(prompt_tokens, dtype=np.int64))
            if state is not None and state_common >= best_common + USEFUL_PREFIX_TOKENS:
                return min(free_slots, key=_recency), state_common, state
        return best, best_common, None

    def _fill_slot(self, slot: Slot, common: int, saved_state: SavedState | None, prompt_tokens: list[int]) -> int:
        """Make `slot` hold the first `common` prompt tokens (restoring `saved_state` first, if
        given), saving what it held before when that is lost; returns the prompt tokens reused."""
        if len(slot.cached_tokens) > (0 if saved_state is not None else common):
            self._save(slot)
        if saved_state is not None:
            if self.state_cache.restore(self._context, saved_state, slot.index):
                slot.cached_tokens[:] = saved_state.tokens.tolist()
            else:
                slot.cached_tokens.clear()
                common = 0
        # At least one prompt token must be decoded to get logits for the first sample.
        return self._trim_cache(slot, min(common, len(prompt_tokens) - 1))

    def _save(self, slot: Slot) -> None:
        """Save the slot's conversation into the state cache before it is overwritten."""
        context = self._context
        if not self.state_cache.enabled:
            return
        if context.is_sliding_window and context.first_position(slot.index) > 0:
            return  # the window already dropped the start of this sequence: no prompt can reuse it
        self.state_cache.save(context, slot.index, slot.cached_tokens)

    def _trim_cache(self, slot: Slot, reused: int) -> int:
        """Cut the slot's KV back to the reused prefix; returns how many tokens are really kept."""
        context = self._context
        if reused > 0 and context.is_sliding_window and context.first_position(slot.index) > 0:
            reused = 0  # the sliding window already dropped the start of this sequence
        if reused > 0 and not context.forget(slot.index, reused):
            reused = 0
        if reused == 0:
            context.forget(slot.index)
        del slot.cached_tokens[reused:]
        return reused

    def _reject(self, generation: Generation, result: GeneratedTokenResult) -> None:
        generation.outbox.append(result)
        generation.finished = True
        self._close_images(generation)

    def _release(self, generation: Generation) -> None:
        """Free the slot; its KV stays as a prompt cache for the next request."""
        slot = generation.slot
        if slot is not None and slot.generation is generation:
            slot.generation = None
            self._release_clock += 1
            slot.last_used = self._release_clock
        if generation.sampler is not None:
            generation.sampler.close()
            generation.sampler = None
        self._close_images(generation)

    def _drop(self, generation: Generation) -> None:
        """Cancellation: free the slot and forget its KV."""
        slot = generation.slot
        generation.finished = True
        if slot is not None and slot.generation is generation:
            self._context.forget(slot.index)
            slot.cached_tokens.clear()
        self._release(generation)

    def _evict(self, generation: Generation) -> None:
        _logger.warning(
            "evicting the request in slot %d at %d tokens: %s",
            generation.slot.index if generation.slot else -1,
            generation.position,
            KV_PRESSURE_MESSAGE,
        )
        generation.outbox.append(SamplerError(KV_PRESSURE_MESSAGE))
        self._drop(generation)

    def _decode_and_sample(self) -> None:
        while True:
            planned = self._assemble_batch()
            if not planned:
                return
            status = self._context.decode()
            if status == 0:
                break
            if status == 1:
                # No KV cell left: evict the longest sequence of this batch and try again.
                longest = max((generation for generation, _ in planned), key=lambda g: g.position)
                self._evict(longest)
                continue
            _logger.error("llama_decode failed with status %d; ending the requests of this batch", status)
            for generation, _ in planned:
                generation.outbox.append(SamplerError(f"llama.cpp failed to decode (status {status})"))
                self._drop(generation)
            return
        self._commit_and_sample(planned)

    def _assemble_batch(self) -> list[tuple[Generation, list[int]]]:
        batch = self._context.batch
        batch.clear()
        room = self._context.tokens_per_slot
        planned: list[tuple[Generation, list[int]]] = []
        active = [slot.generation for slot in self._slots if slot.generation is not None]
        for generation in active:
            if generation.pending_token is None or len(generation.outbox) >= OUTBOX_PAUSE_THRESHOLD:
                continue
            if generation.position + 1 > room:
                self._evict(generation)
                continue
            tokens = [generation.pending_token]
            generation.logits_index = batch.add(tokens, generation.position, generation.slot.index, True)
            planned.append((generation, tokens))
        for generation in sorted(
            (g for g in active if g.is_prefilling and not g.finished), key=lambda g: self._live_order(g)
        ):
            if batch.free_space == 0:
                break
            remaining = generation.prompt_tokens[generation.prefilled : generation.text_prefill_end]
            if not remaining:
                continue  # an image comes next: `_evaluate_next_image` decodes it in a later step
            chunk = remaining[: batch.free_space]
            last = generation.prefilled + len(chunk) == len(generation.prompt_tokens)
            index = batch.add(chunk, generation.position, generation.slot.index, last)
            generation.logits_index = index if last else None
            planned.append((generation, chunk))
        return planned

    # --- images (engine/multimodal.py) ------------------------------------------------

    def _tokenize_with_images(self, request: TextGenerationRequest) -> MultimodalPrompt:
        if self._projector is None:
            raise RequestRejected(MultimodalNotSupported("this agent's model has no multimodal projection; send text only"))
        return self._projector.tokenize(request.prompt, request.images, n_batch=self._context.n_batch)

    def _evaluate_next_image(self) -> None:
        """Encode one image and decode it into its slot's sequence: at most one per step, as a work
        item of its own beside the step's batch, so the other slots keep being served."""
        if self._projector is None:
            return
        for slot in self._slots:
            generation = slot.generation
            if generation is None or generation.multimodal is None or generation.finished:
                continue
            if len(generation.outbox) >= OUTBOX_PAUSE_THRESHOLD:
                continue
            image = generation.multimodal.image_at(generation.prefilled)
            if image is None:
                continue
            if generation.position + len(image.pseudo_tokens) >= self._context.tokens_per_slot:
                self._evict(generation)
                return
            status = self._projector.evaluate(image, self._context, slot.index, generation.position)
            if status != 0:
                _logger.error("llama.cpp failed to evaluate an image in slot %d (status %d)", slot.index, status)
                generation.outbox.append(SamplerError(f"llama.cpp failed to evaluate the image (status {status})"))
                self._drop(generation)
                return
            slot.cached_tokens.extend(image.pseudo_tokens)
            generation.prefilled += len(image.pseudo_tokens)
            return

    def _close_images(self, generation: Generation) -> None:
        if generation.multimodal is not None:
            generation.multimodal.close()
            generation.multimodal = None

    # ----------------------------------------------------------------------------------

    def _live_order(self, generation: Generation) -> int:
        try:
            return self._live.index(generation)
        except ValueError:
            return len(self._live)

    def _commit_and_sample(self, planned: Iterable[tuple[Generation, list[int]]]) -> None:
        context, model = self._context, self._model
        if any(generation.is_prefilling and generation.logits_index is not None for generation, _ in planned):
            self._sampled_first_token = True
        for generation, tokens in planned:
            generation.slot.cached_tokens.extend(tokens)
            if generation.is_prefilling:
                generation.prefilled += len(tokens)
        sampling = [
            generation
            for generation, _ in planned
            if generation.logits_index is not None and not generation.finished
        ]
        rows = [(generation.sampler, generation.logits_index) for generation in sampling]
        tokens = sample_step(context.pointer, model.n_vocab, rows)  # type: ignore[arg-type]
        for generation, token in zip(sampling, tokens):
            generation.logits_index = None
            generation.pending_token = None
            generation.outbox.extend(generation.accept_token(token, model))
            if generation.finished:
                self._release(generation)


def _recency(slot: Slot) -> int:
    """Orders free slots from the least to the most worth keeping (an empty one first)."""
    return slot.last_used if slot.cached_tokens else -1


def _common_prefix_length(left: list[int], right: list[int]) -> int:
    length = min(len(left), len(right))
    for index in range(length):
        if left[index] != right[index]:
            return index
    return length


def _reader_caught_up(generation: Generation) -> bool:
    """Whether the reader of `generation`'s stream has taken all that was delivered to it and
    waits for more (or, once the stream is closed, has taken its last result)."""
    if generation.cancelled:
        return True
    if generation.taken_sent is not None and not generation.taken_sent():
        return False
    queue = generation.output.statistics()
    if queue.current_buffer_used:
        return False
    return queue.tasks_waiting_receive > 0 or queue.open_send_channels == 0
