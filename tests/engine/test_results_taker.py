"""`GenerationStream.hand_results_to` over real Gemma 3 270M: a taker gets results straight
from the scheduler while the reader waits, what it declines reaches the reader in order, and
the reader's iteration ends after a terminal result that the taker took, and the next step
waits until what the taker took has been sent."""

from __future__ import annotations

import attrs
import trio

import pytest

from paddler_trio.engine import scheduler as scheduler_module
from paddler_trio.engine.engine import Engine, EngineSettings
from paddler_trio.protocol import (
    ContinueFromRawPromptParams,
    GeneratedTokenResult,
    GenerationDone,
    InferenceParameters,
)
from tests.engine.engine_harness import raw

GREEDY = attrs.evolve(InferenceParameters.deterministic(), context_size=2048, n_batch=512)
PARAMS = ContinueFromRawPromptParams(raw_prompt="1, 2, 3, 4, 5, 6,", max_tokens=12)


def same_generation(results: list[GeneratedTokenResult], expected: list[GeneratedTokenResult]) -> bool:
    """The same tokens in the same order, then Done with the same count (the second run of a
    prompt reads it from the prompt cache, so only the cached count differs)."""
    *tokens, done = results
    *expected_tokens, expected_done = expected
    assert isinstance(done, GenerationDone) and isinstance(expected_done, GenerationDone)
    return tokens == expected_tokens and done.usage.content_tokens == expected_done.usage.content_tokens


async def test_a_taker_gets_every_result_and_the_reader_none(gemma_model_path):
    async with Engine.open(EngineSettings(str(gemma_model_path), slots=1, inference_parameters=GREEDY)) as engine:
        expected = (await raw(engine, PARAMS)).results
        taken: list[GeneratedTokenResult] = []
        read: list[GeneratedTokenResult] = []
        async with engine.continue_from_raw_prompt(PARAMS) as stream:
            stream.hand_results_to(lambda result: taken.append(result) is None, sent=lambda: True)
            with trio.fail_after(60):
                async for result in stream:
                    read.append(result)
        assert read == []
        assert same_generation(taken, expected)
        assert engine.scheduler.slots_busy == 0


async def test_declined_results_reach_the_reader_in_order_and_nothing_overtakes_them(gemma_model_path):
    async with Engine.open(EngineSettings(str(gemma_model_path), slots=1, inference_parameters=GREEDY)) as engine:
        expected = (await raw(engine, PARAMS)).results
        # Every result passes one of the two ways, tagged with the way and the moment it passed.
        passed: list[tuple[str, GeneratedTokenResult]] = []

        def take(result: GeneratedTokenResult) -> bool:
            if len(passed) % 3 == 1:  # decline every third result
                return False
            passed.append(("taker", result))
            return True

        async with engine.continue_from_raw_prompt(PARAMS) as stream:
            stream.hand_results_to(take, sent=lambda: True)
            with trio.fail_after(60):
                async for result in stream:
                    # While the reader is busy with a result (handing it on, say), the results
                    # after it must queue for the reader instead of going to the taker.
                    await trio.sleep(0.05)
                    passed.append(("reader", result))
        assert same_generation([result for _, result in passed], expected)
        assert {"taker", "reader"} == {way for way, _ in passed}
        assert engine.scheduler.slots_busy == 0


async def test_the_next_step_waits_until_what_the_taker_took_is_sent(gemma_model_path, monkeypatch: pytest.MonkeyPatch):
    """On the CPU every step hands off; with a hand-off limit far longer than the test, no step
    starts while a taken result is not sent, and `results_sent` lets the next one start."""
    monkeypatch.setattr(scheduler_module, "HANDOFF_LIMIT", 60.0)
    async with Engine.open(EngineSettings(str(gemma_model_path), slots=1, inference_parameters=GREEDY)) as engine:
        unsent = False
        step_of_last_take = -1
        # For each send: the step during whose hand-off the results were taken, and the step then.
        steps_taken_and_sent: list[tuple[int, int]] = []

        def take(result: GeneratedTokenResult) -> bool:
            nonlocal unsent, step_of_last_take
            unsent = True
            step_of_last_take = engine.scheduler.steps_started
            return True

        async def send_a_moment_later() -> None:
            nonlocal unsent
            while True:
                await trio.sleep(0.02)
                if unsent:
                    steps_taken_and_sent.append((step_of_last_take, engine.scheduler.steps_started))
                    unsent = False
                    engine.results_sent()

        async with trio.open_nursery() as nursery, engine.continue_from_raw_prompt(PARAMS) as stream:
            stream.hand_results_to(take, sent=lambda: not unsent)
            nursery.start_soon(send_a_moment_later)
            with trio.fail_after(60):
                async for _ in stream:
                    pass
            nursery.cancel_scope.cancel()
        assert len(steps_taken_and_sent) > 5
        assert all(taken == sent for taken, sent in steps_taken_and_sent), steps_taken_and_sent
