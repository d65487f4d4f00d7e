"""Helpers for engine tests: run one request to its end and gather what it produced."""

from __future__ import annotations

import attrs

from paddler_trio.engine.engine import Engine, GenerationStream
from paddler_trio.protocol import (
    ContentToken,
    GeneratedTokenResult,
    GenerationDone,
    ReasoningToken,
    ToolCallToken,
    TokenUsage,
    is_terminal,
)


@attrs.define
class Outcome:
    results: list[GeneratedTokenResult]

    @property
    def terminal(self) -> GeneratedTokenResult:
        assert self.results, "the stream ended without any result"
        return self.results[-1]

    @property
    def usage(self) -> TokenUsage:
        terminal = self.terminal
        assert isinstance(terminal, GenerationDone), f"expected Done, got {terminal!r}"
        return terminal.usage

    @property
    def content(self) -> str:
        return "".join(r.text for r in self.results if isinstance(r, ContentToken))

    @property
    def reasoning(self) -> str:
        return "".join(r.text for r in self.results if isinstance(r, ReasoningToken))

    @property
    def tool_call_text(self) -> str:
        return "".join(r.text for r in self.results if isinstance(r, ToolCallToken))


async def collect(stream: GenerationStream) -> Outcome:
    results: list[GeneratedTokenResult] = []
    async for result in stream:
        results.append(result)
        if is_terminal(result):
            break
    return Outcome(results)


async def raw(engine: Engine, params) -> Outcome:
    async with engine.continue_from_raw_prompt(params) as stream:
        return await collect(stream)


async def chat(engine: Engine, params) -> Outcome:
    async with engine.continue_from_conversation_history(params) as stream:
        return await collect(stream)
