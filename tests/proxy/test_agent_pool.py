"""Slot selection across agents (spec 6.1 and beyond-Paddler item 1), and membership."""

from __future__ import annotations

from collections import Counter

import attrs

from paddler_trio.proxy.agent_pool import AgentPool
from paddler_trio.protocol import ModelFileDoesNotExist
from tests.proxy.pool_fixtures import agent


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
