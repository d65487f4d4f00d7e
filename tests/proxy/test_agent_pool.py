"""Slot selection across agents (spec 6.1 and beyond-Paddler item 1), and membership."""

from __future__ import annotations

from collections import Counter

import attrs

from paddler_trio.protocol import ConversationMessage, ModelFileDoesNotExist
from paddler_trio.proxy.agent_pool import BUSY_SHARE_MARGIN, AgentPool
from paddler_trio.proxy.prefix_chain import PrefixChain, conversation_chain, raw_prompt_chain
from paddler_trio.routing_policy import RoutingPolicy
from paddler_trio.proxy.agent_wants import LLAMA_SERVER_AGENT
from tests.proxy.pool_fixtures import agent, llama_server_agent


def test_two_agents_two_slots_each_share_a_burst_evenly() -> None:
    pool = AgentPool()
    pool.register(agent("a", slots=2))
    pool.register(agent("b", slots=2))
    claims = [pool.try_claim() for _ in range(4)]
    assert Counter(claim.agent.id for claim in claims if claim) == {"a": 2, "b": 2}
    assert pool.try_claim() is None


def test_four_single_slot_agents_each_get_one() -> None:
    pool = AgentPool()
    for name in "abcd":
        pool.register(agent(name))
    claims = [pool.try_claim() for _ in range(4)]
    assert sorted(claim.agent.id for claim in claims if claim) == ["a", "b", "c", "d"]


def test_least_busy_share_wins_over_absolute_count() -> None:
    pool = AgentPool()
    pool.register(agent("big", slots=8))
    pool.register(agent("small", slots=2))
    claims = [pool.try_claim() for _ in range(5)]
    counts = Counter(claim.agent.id for claim in claims if claim)
    assert counts == {"big": 4, "small": 1}


def test_ties_rotate_instead_of_favouring_one_agent() -> None:
    pool = AgentPool()
    pool.register(agent("a", slots=1))
    pool.register(agent("b", slots=1))
    chosen = []
    for _ in range(6):
        claim = pool.try_claim()
        assert claim is not None
        chosen.append(claim.agent.id)
        claim.release()
    assert Counter(chosen) == {"a": 3, "b": 3}


def test_agents_without_model_or_with_issues_take_no_work() -> None:
    pool = AgentPool()
    pool.register(agent("no-model", model_path=None))
    broken = agent("broken")
    broken.status = attrs.evolve(broken.status, issues=frozenset({ModelFileDoesNotExist(model_path="/m.gguf")}))
    pool.register(broken)
    assert pool.try_claim() is None


def test_status_updates_never_clobber_the_balancer_count() -> None:
    pool = AgentPool()
    controller = agent("a", slots=2)
    pool.register(controller)
    pool.try_claim()
    newer = attrs.evolve(controller.status, version=controller.status.version + 1, slots_processing=0)
    controller.update_status(newer)
    assert controller.slots_processing == 1
    assert pool.snapshot().agents[0].slots_processing == 1


def test_release_is_idempotent() -> None:
    pool = AgentPool()
    pool.register(agent("a"))
    claim = pool.try_claim()
    assert claim is not None
    claim.release()
    claim.release()
    assert pool.slots_processing == 0


def test_deregistering_a_departed_connection_leaves_the_agent_that_reconnected_under_its_id() -> None:
    pool = AgentPool()
    departed = agent("a")
    pool.register(departed)
    pool.deregister(departed)
    reconnected = agent("a")
    pool.register(reconnected)
    pool.deregister(departed)  # the old connection's handler finishing late
    assert [listed.id for listed in pool.agents] == ["a"]
    assert pool.agents[0] is reconnected
    assert departed.connection_closed.is_set() and not reconnected.connection_closed.is_set()


# --- cache-aware routing -------------------------------------------------------------------


def _served_by(pool: AgentPool, prefix: PrefixChain) -> str:
    claim = pool.try_claim(prefix=prefix)
    assert claim is not None
    claim.release()
    return claim.agent.id


def test_cache_aware_sends_a_prefix_back_to_the_agent_that_holds_it() -> None:
    pool = AgentPool(RoutingPolicy.CACHE_AWARE)
    pool.register(agent("a", slots=2))
    pool.register(agent("b", slots=2))
    first, second = raw_prompt_chain("first" * 100), raw_prompt_chain("second" * 100)
    home_of_first, home_of_second = _served_by(pool, first), _served_by(pool, second)
    assert home_of_first != home_of_second  # no match: Paddler's rule, in turn
    assert [_served_by(pool, first) for _ in range(3)] == [home_of_first] * 3
    assert _served_by(pool, raw_prompt_chain("second" * 100 + "more")) == home_of_second


def test_least_busy_ignores_prefixes() -> None:
    pool = AgentPool(RoutingPolicy.LEAST_BUSY)
    pool.register(agent("a"))
    pool.register(agent("b"))
    chain = raw_prompt_chain("same")
    assert Counter(_served_by(pool, chain) for _ in range(4)) == {"a": 2, "b": 2}


def test_cache_aware_leaves_a_holder_busier_than_the_margin() -> None:
    pool = AgentPool(RoutingPolicy.CACHE_AWARE)
    pool.register(agent("a", slots=4))
    pool.register(agent("b", slots=4))
    chain = raw_prompt_chain("shared system prompt " * 20)
    claims = [pool.try_claim(prefix=chain) for _ in range(2)]
    # a: 2 of 4 busy against b's 0: beyond BUSY_SHARE_MARGIN, so b takes it (and now holds it too).
    assert [claim.agent.id for claim in claims if claim] == ["a", "a"]
    third = pool.try_claim(prefix=chain)
    assert third is not None and third.agent.id == "b"
    assert BUSY_SHARE_MARGIN == 0.25


def test_cache_aware_prefers_the_longer_match() -> None:
    pool = AgentPool(RoutingPolicy.CACHE_AWARE)
    pool.register(agent("a", slots=4))
    pool.register(agent("b", slots=4))
    system = ConversationMessage(role="system", content="rules " * 50)
    short = conversation_chain((system,))
    long = conversation_chain((system, ConversationMessage(role="user", content="question " * 50)))
    pool.agents[0].prefixes.record(short, capacity=4)
    pool.agents[1].prefixes.record(long, capacity=4)
    longer = conversation_chain((system, ConversationMessage(role="user", content="question " * 50), system))
    assert _served_by(pool, longer) == "b"


def test_a_claim_that_forgets_its_prefix_leaves_no_affinity() -> None:
    pool = AgentPool(RoutingPolicy.CACHE_AWARE)
    pool.register(agent("a"))
    chain = raw_prompt_chain("prompt")
    claim = pool.try_claim(prefix=chain)
    assert claim is not None
    claim.forget_prefix()
    claim.release()
    assert pool.agents[0].prefixes.matched_characters(chain) == 0


def test_an_agent_that_leaves_takes_its_affinity_with_it() -> None:
    pool = AgentPool(RoutingPolicy.CACHE_AWARE)
    holder, other = agent("holder", slots=4), agent("other", slots=4)
    pool.register(holder)
    pool.register(other)
    chain = raw_prompt_chain("prompt " * 100)
    holder.prefixes.record(chain, capacity=4)
    holder.slots_processing = 1  # a quarter busier than `other`: still within the margin
    assert _served_by(pool, chain) == "holder"
    pool.deregister(holder)
    returned = agent("holder", slots=4)  # the same id again: a new connection
    returned.slots_processing = 1
    pool.register(returned)
    assert _served_by(pool, chain) == "other"


def test_a_llama_server_slot_is_free_again_as_soon_as_its_claim_ends() -> None:
    pool = AgentPool()
    watcher = llama_server_agent("l", slots=2)
    pool.register(watcher)
    claims = [pool.try_claim(LLAMA_SERVER_AGENT), pool.try_claim(LLAMA_SERVER_AGENT)]
    assert None not in claims and pool.try_claim(LLAMA_SERVER_AGENT) is None
    # The agent's report shows both requests running; then one ends, before the next report.
    watcher.update_status(attrs.evolve(watcher.status, slots_processing=2, version=2))
    claims[0].release()  # type: ignore[union-attr]
    assert watcher.slots_busy == 1
    assert pool.try_claim(LLAMA_SERVER_AGENT) is not None


def test_a_llama_server_slot_its_own_clients_hold_stays_busy() -> None:
    pool = AgentPool()
    watcher = llama_server_agent("l", slots=2)
    pool.register(watcher)
    watcher.update_status(attrs.evolve(watcher.status, slots_processing=1, version=2))  # a client of its own
    claim = pool.try_claim(LLAMA_SERVER_AGENT)
    assert claim is not None and pool.try_claim(LLAMA_SERVER_AGENT) is None
    watcher.update_status(attrs.evolve(watcher.status, slots_processing=2, version=3))
    claim.release()
    assert watcher.slots_busy == 1  # its own client's request still runs
    watcher.update_status(attrs.evolve(watcher.status, slots_processing=1, version=4))
    assert watcher.slots_busy == 1


def test_a_llama_server_taken_out_of_rotation_comes_back_only_with_a_newer_poll() -> None:
    pool = AgentPool()
    watcher = llama_server_agent("l", slots=2)
    pool.register(watcher)
    watcher.take_out_of_rotation()
    # The agent's report of every second repeats its last poll, made before the failure.
    watcher.update_status(watcher.status)
    assert pool.try_claim(LLAMA_SERVER_AGENT) is None
    watcher.update_status(attrs.evolve(watcher.status, version=watcher.status.version + 1))
    assert pool.try_claim(LLAMA_SERVER_AGENT) is not None


def test_an_engine_agent_taken_out_of_rotation_comes_back_with_any_report() -> None:
    pool = AgentPool()
    frozen = agent("e", slots=2)
    pool.register(frozen)
    frozen.take_out_of_rotation()
    assert pool.try_claim() is None
    frozen.update_status(frozen.status)  # its link answers again
    assert pool.try_claim() is not None
