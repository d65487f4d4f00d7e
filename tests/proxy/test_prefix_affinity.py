"""What the balancer assumes an agent's prompt cache holds."""

from __future__ import annotations

import attrs

from paddler_trio.protocol import ConversationMessage, StateApplicationStatus
from paddler_trio.proxy.prefix_affinity import AgentPrefixes
from paddler_trio.proxy.prefix_chain import PrefixChain, conversation_chain, raw_prompt_chain
from tests.proxy.pool_fixtures import agent
from tests.proxy.scripted_fake_agent import status_snapshot


def _conversation(*texts: str) -> PrefixChain:
    return conversation_chain(tuple(ConversationMessage(role="user", content=text) for text in texts))


def test_a_recorded_chain_matches_its_extensions_up_to_the_shared_prefix() -> None:
    prefixes = AgentPrefixes()
    prefixes.record(_conversation("system", "question"), capacity=1)
    held = _conversation("system", "question").ends[-1]
    assert prefixes.matched_characters(_conversation("system", "question", "answer", "next")) == held
    assert 0 < prefixes.matched_characters(_conversation("system", "other")) < prefixes.matched_characters(
        _conversation("system", "question")
    )
    assert prefixes.matched_characters(_conversation("else")) == 0


def test_an_extension_replaces_the_chain_it_extends() -> None:
    prefixes = AgentPrefixes()
    prefixes.record(_conversation("a"), capacity=2)
    prefixes.record(_conversation("a", "b"), capacity=2)
    assert len(prefixes) == 1


def test_chains_beyond_the_slots_are_forgotten_least_recently_sent_first() -> None:
    prefixes = AgentPrefixes()
    first, second, third = raw_prompt_chain("first"), raw_prompt_chain("second"), raw_prompt_chain("third")
    prefixes.record(first, capacity=2)
    prefixes.record(second, capacity=2)
    prefixes.record(first, capacity=2)  # sent again: now the most recent
    prefixes.record(third, capacity=2)
    assert prefixes.matched_characters(first) and prefixes.matched_characters(third)
    assert prefixes.matched_characters(second) == 0


def test_a_shared_link_stays_while_any_chain_holding_it_stays() -> None:
    prefixes = AgentPrefixes()
    left, right = _conversation("system", "left"), _conversation("system", "right")
    prefixes.record(left, capacity=2)
    prefixes.record(right, capacity=2)
    prefixes.forget(left)
    assert prefixes.matched_characters(_conversation("system", "third")) > 0
    prefixes.forget(right)
    assert prefixes.matched_characters(_conversation("system", "third")) == 0


def test_an_agent_forgets_its_prefixes_when_it_reloads_or_changes_model() -> None:
    controller = agent("a", slots=2)
    chain = raw_prompt_chain("prompt")
    controller.prefixes.record(chain, capacity=2)
    controller.update_status(status_snapshot(slots=2, model_path="/m.gguf", version=2))
    assert controller.prefixes.matched_characters(chain)  # nothing the cache depends on changed
    # Fewer slots reported while another balancer's requests hold some: the cache is still there.
    controller.update_status(status_snapshot(slots=1, model_path="/m.gguf", version=3))
    assert controller.prefixes.matched_characters(chain)
    reloading = attrs.evolve(status_snapshot(slots=0, model_path="/m.gguf", version=4), state_application_status=StateApplicationStatus.FRESH)
    controller.update_status(reloading)
    assert controller.prefixes.matched_characters(chain) == 0
    controller.update_status(status_snapshot(slots=3, model_path="/m.gguf", version=5))
    controller.prefixes.record(chain, capacity=3)
    controller.update_status(status_snapshot(slots=3, model_path="/other.gguf", version=6))
    assert controller.prefixes.matched_characters(chain) == 0


def test_an_agent_with_a_prompt_state_cache_is_assumed_to_hold_more_prompts_than_slots() -> None:
    controller = agent("a", slots=2)
    assert controller.prefix_capacity == 2
    controller.update_status(attrs.evolve(status_snapshot(slots=2, model_path="/m.gguf", version=2), cache_states=5))
    assert controller.prefix_capacity == 7
    chains = [raw_prompt_chain(f"conversation {index}") for index in range(8)]
    for chain in chains:
        controller.prefixes.record(chain, controller.prefix_capacity)
    assert controller.prefixes.matched_characters(chains[0]) == 0  # the least recent is out
    assert all(controller.prefixes.matched_characters(chain) for chain in chains[1:])
