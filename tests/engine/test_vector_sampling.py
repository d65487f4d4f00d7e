"""The numpy sampling path: same picks as llama.cpp's chain for greedy, the right
distribution for temperature / top-k / top-p / min-p, reproducible seeds."""

from __future__ import annotations

import math

import attrs
import numpy as np
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import paddler_trio.engine  # noqa: F401  (llama_cpp before numpy users)
from paddler_trio.engine.context import DecodingContext
from paddler_trio.engine.engine import Engine, EngineSettings
from paddler_trio.engine.model import LoadedModel
from paddler_trio.engine.sampling import SamplerChain, SamplingSettings
from paddler_trio.engine.vector_sampling import VectorSampler, top_k_ids
from paddler_trio.protocol import ContinueFromRawPromptParams, GbnfGrammar, GenerationDone, InferenceParameters
from tests.engine.engine_harness import raw

VOCAB = 400


def settings(**overrides) -> SamplingSettings:
    base = dict(
        temperature=0.8, top_k=40, top_p=0.9, min_p=0.05,
        penalty_last_n=0, penalty_repeat=1.0, penalty_frequency=0.0, penalty_presence=0.0, seed=7,
    )
    base.update(overrides)
    return SamplingSettings(**base)


def expected_distribution(logits: np.ndarray, chosen: SamplingSettings) -> dict[int, float]:
    """A plain re-statement of llama.cpp's top_k -> top_p -> min_p -> temperature -> dist."""
    ranked = sorted(range(logits.size), key=lambda token: -logits[token])[: chosen.top_k]
    values = [float(logits[token]) for token in ranked]
    weights = [math.exp(value - values[0]) for value in values]
    total, cumulative, keep = sum(weights), 0.0, len(ranked)
    for position, weight in enumerate(weights):
        cumulative += weight / total
        if cumulative >= chosen.top_p:
            keep = position + 1
            break
    ranked, values = ranked[:keep], values[:keep]
    floor = values[0] + math.log(chosen.min_p) if chosen.min_p > 0 else -math.inf
    kept = [(token, value) for token, value in zip(ranked, values) if value >= floor]
    scaled = [math.exp((value - kept[0][1]) / chosen.temperature) for _, value in kept]
    return {token: weight / sum(scaled) for (token, _), weight in zip(kept, scaled)}


@pytest.mark.parametrize(
    "chosen",
    [
        settings(),
        settings(temperature=1.5, top_k=10, top_p=1.0, min_p=0.0),
        settings(temperature=0.5, top_k=200, top_p=0.5, min_p=0.0),
        settings(temperature=1.0, top_k=100, top_p=1.0, min_p=0.2),
    ],
    ids=["defaults-like", "top-k", "top-p", "min-p"],
)
def test_sampled_frequencies_match_the_expected_distribution(chosen):
    logits = np.random.default_rng(1).normal(0.0, 2.0, VOCAB).astype(np.float32)
    expected = expected_distribution(logits, chosen)
    sampler = VectorSampler(chosen, n_vocab=VOCAB, context_tokens=1024)
    draws = 20_000
    counts: dict[int, int] = {}
    for _ in range(draws):
        token = sampler.sample_row(logits.copy())
        counts[token] = counts.get(token, 0) + 1
    # Every draw lies in the allowed set...
    assert set(counts) <= set(expected)
    # ...and the frequencies match: total variation distance below 0.03 at 20,000 draws
    # (the sampling noise alone is about 0.01 here; a wrong cut-off or temperature gives > 0.05).
    distance = 0.5 * sum(abs(counts.get(token, 0) / draws - probability) for token, probability in expected.items())
    assert distance < 0.03, distance


def test_a_fixed_seed_reproduces_the_draws():
    logits = np.random.default_rng(2).normal(0.0, 2.0, VOCAB).astype(np.float32)
    first = VectorSampler(settings(seed=42), n_vocab=VOCAB, context_tokens=1024)
    second = VectorSampler(settings(seed=42), n_vocab=VOCAB, context_tokens=1024)
    assert [first.sample_row(logits.copy()) for _ in range(50)] == [second.sample_row(logits.copy()) for _ in range(50)]


def test_penalties_follow_llama_cpp_arithmetic():
    chosen = settings(temperature=0.0, penalty_last_n=3, penalty_repeat=2.0, penalty_frequency=0.5, penalty_presence=1.0)
    sampler = VectorSampler(chosen, n_vocab=4, context_tokens=1024)
    for token in (0, 0, 1, 2):  # the window keeps the last 3: counts {0: 1, 1: 1, 2: 1}
        sampler.accept(token)
    row = np.array([4.0, -1.0, 3.0, 0.5], dtype=np.float32)
    sampler.sample_row(row)
    assert row.tolist() == pytest.approx([4.0 / 2 - 0.5 - 1.0, -1.0 * 2 - 0.5 - 1.0, 3.0 / 2 - 0.5 - 1.0, 0.5])


def test_greedy_picks_equal_the_c_chain_on_the_same_logits(gemma_model_path):
    model = LoadedModel.load(str(gemma_model_path))
    parameters = attrs.evolve(InferenceParameters.deterministic(), context_size=1024, n_batch=256)
    context = DecodingContext(model, parameters, slots=4, n_threads=2)
    try:
        prompts = ["1, 2, 3,", "The capital of France is", "def fibonacci(n):", "Once upon a time"]
        context.batch.clear()
        indices = [context.batch.add(model.tokenize(prompt, add_special=True), 0, slot, True) for slot, prompt in enumerate(prompts)]
        assert context.decode() == 0
        for penalties in (dict(), dict(penalty_last_n=64, penalty_repeat=1.3, penalty_presence=0.5)):
            chosen = settings(temperature=0.0, **penalties)
            history = [236743, 236770, 236778, 108]  # a few tokens both samplers have "generated"
            for index in indices:
                chain = SamplerChain(model, chosen, None, context_tokens=context.tokens_per_slot)
                vector = VectorSampler(chosen, n_vocab=model.n_vocab, context_tokens=context.tokens_per_slot)
                for token in history:
                    chain.accept(token)
                    vector.accept(token)
                assert vector.sample(context.pointer, index) == chain.sample(context.pointer, index)
                chain.close()
    finally:
        context.close()
        model.close()


async def test_grammar_and_plain_slots_share_a_batch(gemma_model_path):
    parameters = attrs.evolve(InferenceParameters.deterministic(), context_size=1024, n_batch=256)
    async with Engine.open(EngineSettings(str(gemma_model_path), slots=2, inference_parameters=parameters)) as engine:
        grammar = GbnfGrammar(grammar='root ::= "yes" | "no"', root="root")
        results = {}

        async def run(name, params):
            results[name] = await raw(engine, params)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, "grammar", ContinueFromRawPromptParams(raw_prompt="Is the sky blue? Answer:", max_tokens=8, grammar=grammar))
            nursery.start_soon(run, "plain", ContinueFromRawPromptParams(raw_prompt="1, 2, 3, 4,", max_tokens=8))
    assert results["grammar"].content in ("yes", "no")
    assert isinstance(results["grammar"].terminal, GenerationDone)
    assert results["plain"].content.startswith(" 5, 6")


def test_any_integer_seed_is_accepted():
    logits = np.random.default_rng(3).normal(0.0, 2.0, VOCAB).astype(np.float32)
    for seed in (-1, -(2**70), 2**70):
        sampler = VectorSampler(settings(seed=seed), n_vocab=VOCAB, context_tokens=1024)
        assert 0 <= sampler.sample_row(logits.copy()) < VOCAB


@given(
    logits=arrays(np.float32, st.integers(2, 3000), elements=st.floats(-30, 30, width=32)),
    k_fraction=st.floats(0.0, 1.0),
)
def test_top_k_keeps_exactly_the_k_largest_logits(logits: np.ndarray, k_fraction: float) -> None:
    k = 1 + int(k_fraction * (logits.size - 2))  # 1 <= k < size, as sample_row calls it
    chosen = top_k_ids(logits, k)
    assert len(set(chosen.tolist())) == k
    assert sorted(logits[chosen].tolist()) == sorted(logits.tolist())[-k:]
