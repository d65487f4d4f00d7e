"""The prompt state cache over real Gemma 3 270M (greedy): conversations saved when their slot is
reused, restored for the requests that continue them, evicted by the byte budget."""

from __future__ import annotations

import logging
import re

import attrs
import pytest

from paddler_trio.engine.engine import Engine, EngineSettings
from paddler_trio.engine.engine_errors import InvalidEngineSettings
from paddler_trio.engine.state_cache import MIB
from paddler_trio.protocol import ContinueFromRawPromptParams, InferenceParameters
from tests.engine.engine_harness import raw

GREEDY = attrs.evolve(InferenceParameters.deterministic(), context_size=2048, n_batch=512)
# Gemma writes a digit per token: a counting prompt of 30 numbers is about 150 tokens, whose
# saved state takes about 1.5 MiB.
CONVERSATION_NUMBERS = 30


def counting(start: int, count: int = CONVERSATION_NUMBERS, *, max_tokens: int = 8) -> ContinueFromRawPromptParams:
    prompt = ", ".join(str(number) for number in range(start, start + count)) + ","
    return ContinueFromRawPromptParams(raw_prompt=prompt, max_tokens=max_tokens)


def numbers_in(text: str) -> list[int]:
    return [int(found) for found in re.findall(r"\d+", text)]


def settings(model_path, *, slots: int, cache_ram_mib: int) -> EngineSettings:
    # One thread: the test machine's cores are shared with other work.
    return EngineSettings(
        str(model_path), slots=slots, inference_parameters=GREEDY, cache_ram_mib=cache_ram_mib, n_threads=1
    )


# The first request of a conversation and the one continuing it (its prompt holds the first
# prompt, the reply and more).
FIRST = counting(100)
FOLLOW_UP = counting(100, CONVERSATION_NUMBERS + 10, max_tokens=16)
# Only the BOS token is shared with a slot holding another conversation.
UNRELATED_PREFIX = 1


async def test_a_conversation_restored_on_another_slot_continues_token_for_token_as_from_its_live_kv(
    gemma_model_path, caplog
):
    async with Engine.open(settings(gemma_model_path, slots=2, cache_ram_mib=64)) as engine:
        await raw(engine, FIRST)
        live = await raw(engine, FOLLOW_UP)  # slot 0 still holds the conversation

    caplog.set_level(logging.DEBUG, logger="paddler_trio.engine.state_cache")
    async with Engine.open(settings(gemma_model_path, slots=2, cache_ram_mib=64)) as engine:
        await raw(engine, FIRST)  # slot 0
        await raw(engine, counting(5000, max_tokens=4))  # slot 1, empty
        await raw(engine, counting(7000, max_tokens=4))  # slot 0, the least recently used: the conversation is saved
        assert engine.state_cache_figures.states == 1
        restored = await raw(engine, FOLLOW_UP)  # restored into slot 1, now the least recently used

    assert re.search(r"restored a saved state of \d+ tokens into slot 1", caplog.text)
    assert restored.results == live.results  # every token, and the usage
    assert live.usage.cached_prompt_tokens > 100
    assert numbers_in(restored.content)[:2] == [140, 141]


async def test_a_conversation_evicted_from_the_cache_is_prefilled_in_full(gemma_model_path):
    # 2 MiB hold one conversation's state, not two.
    async with Engine.open(settings(gemma_model_path, slots=1, cache_ram_mib=2)) as engine:
        await raw(engine, FIRST)
        await raw(engine, counting(5000, max_tokens=4))  # FIRST saved
        await raw(engine, counting(7000, max_tokens=4))  # 5000 saved, FIRST evicted
        figures = engine.state_cache_figures
        assert figures.states == 1 and figures.used_bytes <= figures.limit_bytes == 2 * MIB

        # The state still held serves its own conversation; the evicted one is prefilled.
        kept = await raw(engine, counting(5000, CONVERSATION_NUMBERS + 10))
        assert kept.usage.cached_prompt_tokens > 100
        again = await raw(engine, FOLLOW_UP)
        assert again.usage.cached_prompt_tokens == UNRELATED_PREFIX
        assert numbers_in(again.content)[:2] == [140, 141]


async def test_a_state_larger_than_the_whole_budget_is_not_kept(gemma_model_path):
    async with Engine.open(settings(gemma_model_path, slots=1, cache_ram_mib=1)) as engine:
        await raw(engine, FIRST)
        await raw(engine, counting(5000, max_tokens=4))
        assert engine.state_cache_figures.states == 0
        again = await raw(engine, FOLLOW_UP)
        assert again.usage.cached_prompt_tokens == UNRELATED_PREFIX


async def test_conversations_only_share_the_tokens_they_have_in_common(gemma_model_path):
    async with Engine.open(settings(gemma_model_path, slots=1, cache_ram_mib=64)) as engine:
        await raw(engine, FIRST)
        other = await raw(engine, counting(5000, max_tokens=12))  # FIRST saved; nothing of it fits this prompt
        assert other.usage.cached_prompt_tokens == UNRELATED_PREFIX
        assert numbers_in(other.content)[:2] == [5030, 5031]

        # Shares FIRST's first 20 numbers, then counts elsewhere: FIRST is restored and cut back
        # to the shared part, so nothing of what followed it is seen.
        shared = ", ".join(str(number) for number in range(100, 120))
        branch = ContinueFromRawPromptParams(
            raw_prompt=shared + ", " + ", ".join(str(number) for number in range(600, 615)) + ",", max_tokens=12
        )
        branched = await raw(engine, branch)
        shared_tokens = len(engine.model.tokenize(shared + ",", add_special=True))
        assert abs(branched.usage.cached_prompt_tokens - shared_tokens) <= 2
        assert numbers_in(branched.content)[:2] == [615, 616]


async def test_cache_ram_mib_0_turns_the_cache_off(gemma_model_path):
    async with Engine.open(settings(gemma_model_path, slots=1, cache_ram_mib=0)) as engine:
        await raw(engine, FIRST)
        await raw(engine, counting(5000, max_tokens=4))
        again = await raw(engine, FOLLOW_UP)
        assert again.usage.cached_prompt_tokens == UNRELATED_PREFIX
        figures = engine.state_cache_figures
        assert (figures.states, figures.used_bytes, figures.limit_bytes) == (0, 0, 0)


async def test_a_negative_budget_is_refused(gemma_model_path):
    with pytest.raises(InvalidEngineSettings, match="cache_ram_mib must be 0"):
        async with Engine.open(settings(gemma_model_path, slots=1, cache_ram_mib=-1)):
            pass
