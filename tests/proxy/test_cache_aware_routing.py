"""Cache-aware routing end to end: the real balancer, two scripted fake agents."""

from __future__ import annotations

from collections import Counter
from typing import Any

import trio

from paddler_trio.routing_policy import RoutingPolicy
from tests.proxy.balancer_harness import BalancerUnderTest, running_balancer, wait_until

CONVERSATION = "/api/v1/continue_from_conversation_history"
SYSTEM = {"role": "system", "content": "You answer briefly. " * 20}


def _turns(topic: str, *, system: bool = True) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    first = [SYSTEM] if system else []
    first.append({"role": "user", "content": f"Tell me about {topic}."})
    second = [*first, {"role": "assistant", "content": f"{topic} is a topic."}, {"role": "user", "content": "More."}]
    return first, second


async def _ask(balancer: BalancerUnderTest, history: list[dict[str, str]]) -> str:
    body: dict[str, Any] = {
        "add_generation_prompt": True,
        "conversation_history": history,
        "enable_thinking": False,
        "max_tokens": 8,
    }
    messages = await balancer.post_ndjson(CONVERSATION, body)
    return messages[0]["Response"]["generated_by"]


async def test_a_second_turn_goes_to_the_agent_that_served_the_first() -> None:
    async with running_balancer() as balancer:
        for name in ("a", "b"):
            await balancer.add_agent(name=name, slots=4)
        topics = ["owls", "rivers", "clocks", "salt"]
        first_served_by = {topic: await _ask(balancer, _turns(topic, system=False)[0]) for topic in topics}
        assert set(first_served_by.values()) == {"a", "b"}  # nothing shared: Paddler's rule, in turn
        for topic in reversed(topics):
            assert await _ask(balancer, _turns(topic, system=False)[1]) == first_served_by[topic]


async def test_least_busy_takes_turns_whatever_the_prefix() -> None:
    async with running_balancer(routing_policy=RoutingPolicy.LEAST_BUSY) as balancer:
        for name in ("a", "b"):
            await balancer.add_agent(name=name)
        first, second = _turns("owls")
        served = [await _ask(balancer, history) for history in (first, second, first, second)]
        assert served in (["a", "b", "a", "b"], ["b", "a", "b", "a"])


async def test_a_busy_holder_does_not_starve_the_other_agent() -> None:
    async with running_balancer() as balancer:
        agents = [await balancer.add_agent(name=name, slots=4, token_delay=0.3) for name in ("a", "b")]
        served: list[str] = []

        async def one() -> None:
            served.append(await _ask(balancer, _turns("owls")[0]))

        async with trio.open_nursery() as nursery:
            for started in range(1, 5):
                nursery.start_soon(one)
                await wait_until(lambda started=started: _processing_is(balancer, started))
        # The holder takes a quarter of its slots more than the idle agent, then the other shares it.
        assert sorted(Counter(served).values()) == [2, 2]
        assert [agent.max_active for agent in agents] == [2, 2]


async def _processing_is(balancer: BalancerUnderTest, count: int) -> bool:
    return await balancer.slots_processing() == count


async def test_a_conversation_goes_on_elsewhere_once_its_agent_left() -> None:
    async with running_balancer() as balancer:
        agents = {name: await balancer.add_agent(name=name) for name in ("a", "b")}
        first, second = _turns("owls")
        holder = await _ask(balancer, first)
        await agents[holder].drop()
        await wait_until(lambda: _agent_count_is(balancer, 1))
        assert await _ask(balancer, second) == ("b" if holder == "a" else "a")


async def _agent_count_is(balancer: BalancerUnderTest, count: int) -> bool:
    return len(await balancer.agents()) == count
