"""Who gets a freed slot under cache-aware routing: a waiter whose prompt the free agent holds,
within `CACHE_WAIT_LIMIT` of FIFO order (buffer.py's module docstring)."""

from __future__ import annotations

import trio
import trio.testing

from paddler_trio.proxy.agent_pool import AgentPool, SlotClaim
from paddler_trio.proxy.buffer import CACHE_SCAN_LIMIT, CACHE_WAIT_LIMIT, RequestBuffer
from paddler_trio.proxy.prefix_chain import NO_PREFIX, PrefixChain, raw_prompt_chain
from paddler_trio.routing_policy import RoutingPolicy
from tests.proxy.pool_fixtures import agent

ON_X = raw_prompt_chain("conversation held by x " * 20)
ON_Y = raw_prompt_chain("conversation held by y " * 20)
NOWHERE = raw_prompt_chain("conversation held by nobody " * 20)


def busy_x_and_y(
    policy: RoutingPolicy = RoutingPolicy.CACHE_AWARE, timeout: float = 60.0
) -> tuple[RequestBuffer, SlotClaim, SlotClaim]:
    """Agents x and y, one slot each, both busy with (and so holding) ON_X and ON_Y."""
    pool = AgentPool(policy)
    pool.register(agent("x"))
    pool.register(agent("y"))
    on_x = pool.try_claim(exclude=frozenset({"y"}), prefix=ON_X)
    on_y = pool.try_claim(exclude=frozenset({"x"}), prefix=ON_Y)
    assert on_x is not None and on_y is not None
    buffer = RequestBuffer(pool, max_buffered_requests=100, buffered_request_timeout=timeout)
    return buffer, on_x, on_y


async def served_when_x_frees(
    buffer: RequestBuffer,
    on_x: SlotClaim,
    prefixes: list[PrefixChain],
    clock: trio.testing.MockClock,
    waited: float = 0.0,
) -> list[tuple[int, str]]:
    """Queue one waiter per prefix (oldest first), let `waited` seconds pass, free x's slot:
    which waiters got which agent."""
    served: list[tuple[int, str]] = []

    async def wait(index: int, prefix: PrefixChain) -> None:
        claim = await buffer.claim(prefix)
        served.append((index, claim.agent.id))

    async with trio.open_nursery() as nursery:
        for index, prefix in enumerate(prefixes):
            nursery.start_soon(wait, index, prefix)
            await trio.testing.wait_all_tasks_blocked()
        clock.jump(waited)
        on_x.release()
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    return served


async def test_a_freed_slot_goes_to_the_younger_waiter_whose_prompt_it_holds(mock_clock: trio.testing.MockClock) -> None:
    buffer, on_x, _ = busy_x_and_y()
    served = await served_when_x_frees(buffer, on_x, [ON_Y, NOWHERE, ON_X], clock=mock_clock)
    assert served == [(2, "x")]


async def test_the_oldest_of_the_holders_waiters_goes_first(mock_clock: trio.testing.MockClock) -> None:
    buffer, on_x, _ = busy_x_and_y()
    served = await served_when_x_frees(buffer, on_x, [ON_Y, ON_X, ON_X], clock=mock_clock)
    assert served == [(1, "x")]


async def test_a_waiter_past_the_limit_is_served_first_whatever_the_cache(mock_clock: trio.testing.MockClock) -> None:
    buffer, on_x, _ = busy_x_and_y()
    served = await served_when_x_frees(buffer, on_x, [ON_Y, ON_X], waited=CACHE_WAIT_LIMIT, clock=mock_clock)
    assert served == [(0, "x")]


async def test_the_limit_is_at_most_half_the_buffered_request_timeout(mock_clock: trio.testing.MockClock) -> None:
    buffer, on_x, _ = busy_x_and_y(timeout=4.0)
    served = await served_when_x_frees(buffer, on_x, [ON_Y, ON_X], waited=2.0, clock=mock_clock)
    assert served == [(0, "x")]


async def test_fifo_when_no_waiters_prompt_is_held_by_a_free_agent(mock_clock: trio.testing.MockClock) -> None:
    buffer, on_x, _ = busy_x_and_y()
    served = await served_when_x_frees(buffer, on_x, [ON_Y, NOWHERE, NO_PREFIX], clock=mock_clock)
    assert served == [(0, "x")]


async def test_only_the_first_waiters_are_scanned_for_a_held_prompt(mock_clock: trio.testing.MockClock) -> None:
    buffer, on_x, _ = busy_x_and_y()
    served = await served_when_x_frees(buffer, on_x, [ON_Y] * CACHE_SCAN_LIMIT + [ON_X], clock=mock_clock)
    assert served == [(0, "x")]


async def test_least_busy_stays_strictly_fifo(mock_clock: trio.testing.MockClock) -> None:
    buffer, on_x, _ = busy_x_and_y(RoutingPolicy.LEAST_BUSY)
    served = await served_when_x_frees(buffer, on_x, [ON_Y, ON_X], clock=mock_clock)
    assert served == [(0, "x")]
