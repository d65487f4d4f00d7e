"""Per-sequence state: the slot (sequence id + the tokens its KV holds) and the generation
running in it (prompt progress, sampler chain, limits, section state, output queue).

Everything here runs inside the scheduler's worker thread, except `outbox` draining and the
`stop_requested` / `cancelled` flags, which the Trio side sets between steps.
"""

from __future__ import annotations

import codecs
import collections
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from paddler_trio.engine.sampling import GbnfSource, SamplingSettings
from paddler_trio.engine.token_classifier import Section, TokenClassifier
from paddler_trio.engine.tool_calls import BARE_TOOL_CALL_OPENINGS, ToolCallParser
from paddler_trio.protocol import (
    ContentToken,
    GeneratedTokenResult,
    GenerationDone,
    ReasoningToken,
    TokenUsage,
    ToolCallToken,
)

if TYPE_CHECKING:
    import trio

    from paddler_trio.engine.image_input import DecodedImage
    from paddler_trio.engine.multimodal import MultimodalPrompt
    from paddler_trio.engine.vector_sampling import SlotSampler

    from paddler_trio.engine.model import LoadedModel


@attrs.frozen
class TextGenerationRequest:
    """What the scheduler needs to run one generation (templating already done)."""

    prompt: str
    max_tokens: int
    sampling: SamplingSettings
    grammar: GbnfSource | None = None
    stop: tuple[str, ...] = ()
    tool_call_parser: ToolCallParser | None = None
    starts_in_reasoning: bool = False
    # Benchmarks only: keep generating through end-of-generation tokens up to max_tokens.
    ignore_eos: bool = False
    # The images the prompt's mtmd markers stand for, in order (engine/multimodal.py).
    images: "tuple[DecodedImage, ...]" = ()


@attrs.define(eq=False)
class Slot:
    """Sequence id `index` of the context; `cached_tokens` are the tokens whose KV it holds."""

    index: int
    cached_tokens: list[int] = attrs.field(factory=list)
    generation: "Generation | None" = None
    # When its last request ended, on the scheduler's clock (0: never used).
    last_used: int = 0


@attrs.define(eq=False)
class Generation:
    """One request from admission to its terminal result."""

    request: TextGenerationRequest
    output: "trio.MemorySendChannel[GeneratedTokenResult]"
    outbox: collections.deque[GeneratedTokenResult] = attrs.field(factory=collections.deque)
    # Takes results straight from the scheduler while the consumer waits on an empty output
    # (`GenerationStream.hand_results_to`); False sends that result through `output`.
    taker: "Callable[[GeneratedTokenResult], bool] | None" = None
    # Whether what `taker` took has left the process: the hand-off waits for it as for a reader.
    taken_sent: "Callable[[], bool] | None" = None
    stop_requested: bool = False
    cancelled: bool = False
    finished: bool = False
    # Set at admission, in the worker thread.
    slot: Slot | None = None
    prompt_tokens: list[int] = attrs.field(factory=list)
    # The prompt's images, when it has some: `prompt_tokens` holds their stand-ins.
    multimodal: "MultimodalPrompt | None" = None
    prefilled: int = 0
    sampler: "SlotSampler | None" = None
    pending_token: int | None = None
    logits_index: int | None = None
    usage: TokenUsage = attrs.field(factory=TokenUsage)
    classifier: TokenClassifier | None = None
    _decoder: codecs.IncrementalDecoder = attrs.field(factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    _held_text: str = ""
    _tool_call_text: list[str] = attrs.field(factory=list)
    _counted_tokens: int = 0
    # With tools, a reply that opens like JSON may be a tool call written without markers:
    # it is held back until it ends, then sent as a tool call or as content.
    _content_started: bool = False
    _held_reply: list[str] = attrs.field(factory=list)
    _held_reply_tokens: int = 0
    _counts: dict[Section, int] = attrs.field(factory=lambda: dict.fromkeys(Section, 0))

    @property
    def is_prefilling(self) -> bool:
        return self.prefilled < len(self.prompt_tokens)

    @property
    def text_prefill_end(self) -> int:
        """Where the prompt's next run of text tokens ends (the next image is evaluated on its own)."""
        if self.multimodal is None:
            return len(self.prompt_tokens)
        return self.multimodal.text_end(self.prefilled)

    @property
    def position(self) -> int:
        """Tokens of this sequence already in the KV cache."""
        assert self.slot is not None
        return len(self.slot.cached_tokens)

    def accept_token(self, token: int, model: "LoadedModel") -> list[GeneratedTokenResult]:
        """Turn a sampled token into result events; marks the generation finished when it ends."""
        if token in model.eog_tokens and not self.request.ignore_eos:
            return self._finish_events()
        assert self.classifier is not None
        section, visible, closed = self.classifier.classify(token)
        self._counts[section] += 1
        if section is not Section.TOOL_CALL:
            self._counted_tokens += 1
        events: list[GeneratedTokenResult] = []
        text = self._decoder.decode(model.pieces[token]) if visible else ""
        if section is Section.TOOL_CALL:
            if text:
                events.append(ToolCallToken(text))
                self._tool_call_text.append(text)
            if closed is Section.TOOL_CALL:
                events.extend(self._flush_tool_call())
        elif section is Section.REASONING:
            if text:
                events.append(ReasoningToken(text))
        elif text:
            if self._holds_bare_tool_call(text):
                text = ""
            elif self._held_reply:
                text = "".join(self._held_reply)
                self._held_reply.clear()
            if text and self._append_content(text, events):
                return events + self._finish_events()
        self.pending_token = token
        if self._counted_tokens >= self.request.max_tokens:
            return events + self._finish_events()
        return events

    def _holds_bare_tool_call(self, text: str) -> bool:
        if self.request.tool_call_parser is None or self._content_started:
            return False
        self._held_reply.append(text)
        self._held_reply_tokens += 1
        opening = "".join(self._held_reply).lstrip()
        if not opening or opening.startswith(BARE_TOOL_CALL_OPENINGS) or "```".startswith(opening):
            return True
        self._content_started = True
        return False

    def _release_held_reply(self) -> list[GeneratedTokenResult]:
        raw = "".join(self._held_reply)
        self._held_reply.clear()
        assert self.request.tool_call_parser is not None
        parsed = self.request.tool_call_parser.parse_bare_reply(raw)
        if parsed is None:
            return [ContentToken(raw)]
        self._counts[Section.CONTENT] -= self._held_reply_tokens
        self._counts[Section.TOOL_CALL] += self._held_reply_tokens
        return [ToolCallToken(raw), *parsed]

    def _append_content(self, text: str, events: list[GeneratedTokenResult]) -> bool:
        """Emit content, holding back any tail that could start a stop string; True if stopped."""
        stops = self.request.stop
        if not stops:
            events.append(ContentToken(text))
            return False
        buffered = self._held_text + text
        for stop in stops:
            found = buffered.find(stop)
            if found >= 0:
                if found:
                    events.append(ContentToken(buffered[:found]))
                self._held_text = ""
                return True
        hold = 0
        for stop in stops:
            for length in range(min(len(stop) - 1, len(buffered)), 0, -1):
                if buffered.endswith(stop[:length]):
                    hold = max(hold, length)
                    break
        emit = buffered[: len(buffered) - hold]
        self._held_text = buffered[len(buffered) - hold :]
        if emit:
            events.append(ContentToken(emit))
        return False

    def _flush_tool_call(self) -> list[GeneratedTokenResult]:
        raw = "".join(self._tool_call_text)
        self._tool_call_text.clear()
        if self.request.tool_call_parser is None or not raw:
            return []
        return self.request.tool_call_parser.parse_section(raw)

    def _finish_events(self) -> list[GeneratedTokenResult]:
        events: list[GeneratedTokenResult] = []
        if self._held_reply:
            events.extend(self._release_held_reply())
        if self._held_text:
            events.append(ContentToken(self._held_text))
            self._held_text = ""
        if self._tool_call_text:
            events.extend(self._flush_tool_call())
        self.pending_token = None
        events.append(GenerationDone(self.final_usage()))
        self.finished = True
        return events

    def stop_now(self) -> list[GeneratedTokenResult]:
        """End on request (StopRespondingTo): Done with the usage so far."""
        return self._finish_events()

    def final_usage(self) -> TokenUsage:
        return attrs.evolve(
            self.usage,
            content_tokens=self._counts[Section.CONTENT],
            reasoning_tokens=self._counts[Section.REASONING],
            tool_call_tokens=self._counts[Section.TOOL_CALL],
        )
