"""The FIFO buffer of requests waiting for a slot (spec 6.2 and beyond-Paddler item 2)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from paddler_trio.proxy.agent_pool import AgentPool, SlotClaim
from paddler_trio.proxy.buffer import BufferOverflow, BufferTimeout, RequestBuffer
from paddler_trio.proxy.agent_wants import LLAMA_SERVER_AGENT, AgentWants
from paddler_trio.protocol import AgentKind
from tests.proxy.pool_fixtures import agent, llama_server_agent


def make(max_buffered: int = 10, timeout: float = 5.0, slots: int | None = 1) -> tuple[AgentPool, RequestBuffer]:
    pool = AgentPool()
    if slots is not None:
        pool.register(agent("a", slots=slots))
    return pool, RequestBuffer(pool, max_buffered_requests=max_buffered, buffered_request_timeout=timeout)


async def test_a_free_slot_is_claimed_at_once() -> None:
    pool, buffer = make()
    claim = await buffer.claim()
    assert claim.agent.slots_processing == 1
    assert buffer.current == 0


async def test_max_zero_never_buffers() -> None:
    _, buffer = make(max_buffered=0, slots=None)
    with pytest.raises(BufferOverflow):
        await buffer.claim()


async def test_overflow_once_the_queue_is_full() -> None:
    _, buffer = make(max_buffered=2, slots=None)
    async with trio.open_nursery() as nursery:
        for _ in range(2):
            nursery.start_soon(buffer.claim)
        await trio.testing.wait_all_tasks_blocked()
        assert buffer.current == 2
        with pytest.raises(BufferOverflow):
            await buffer.claim()
        nursery.cancel_scope.cancel()
    assert buffer.current == 0


async def test_timeout_leaves_the_queue(autojump_clock: trio.testing.MockClock) -> None:
    _, buffer = make(timeout=2.0, slots=None)
    started = trio.current_time()
    with pytest.raises(BufferTimeout):
        await buffer.claim()
    assert trio.current_time() - started == pytest.approx(2.0)
    assert buffer.current == 0


async def test_a_cancelled_waiter_leaves_the_queue_at_once() -> None:
    _, buffer = make(slots=None)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(buffer.claim)
        await trio.testing.wait_all_tasks_blocked()
        assert buffer.current == 1
        nursery.cancel_scope.cancel()
    assert buffer.current == 0


async def test_freed_slots_go_to_the_oldest_waiter_only() -> None:
    pool, buffer = make(slots=1)
    first = await buffer.claim()
    served: list[int] = []
    claims: list[SlotClaim] = []

    async def wait(index: int) -> None:
        claims.append(await buffer.claim())
        served.append(index)

    async with trio.open_nursery() as nursery:
        for index in range(4):
            nursery.start_soon(wait, index)
            await trio.testing.wait_all_tasks_blocked()
        assert buffer.current == 4
        first.release()
        await trio.testing.wait_all_tasks_blocked()
        assert served == [0]
        assert buffer.current == 3
        for expected in ([0, 1], [0, 1, 2], [0, 1, 2, 3]):
            claims[-1].release()
            await trio.testing.wait_all_tasks_blocked()
            assert served == expected
    assert pool.slots_processing == 1


async def test_a_new_request_does_not_jump_the_queue() -> None:
    pool, buffer = make(slots=1)
    first = await buffer.claim()
    order: list[str] = []

    async def wait(name: str) -> None:
        claim = await buffer.claim()
        order.append(name)
        claim.release()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait, "old")
        await trio.testing.wait_all_tasks_blocked()
        first.release()  # handed to "old" synchronously, before "new" can try the fast path
        nursery.start_soon(wait, "new")
    assert order == ["old", "new"]


async def test_waiters_are_served_when_an_agent_registers() -> None:
    pool, buffer = make(slots=None)
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(buffer.claim)
        await trio.testing.wait_all_tasks_blocked()
        pool.register(agent("late", slots=2))
        await trio.testing.wait_all_tasks_blocked()
        assert buffer.current == 1
        assert pool.slots_processing == 2
        nursery.cancel_scope.cancel()
    assert buffer.current == 0


async def test_a_slot_handed_to_a_cancelled_waiter_passes_to_the_next() -> None:
    _, buffer = make(slots=1)
    first = await buffer.claim()
    scope = trio.CancelScope()
    got: list[SlotClaim] = []

    async def waiter_to_cancel() -> None:
        with scope:
            await buffer.claim()

    async def patient() -> None:
        got.append(await buffer.claim())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter_to_cancel)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(patient)
        await trio.testing.wait_all_tasks_blocked()
        scope.cancel()  # the first waiter is cancelled...
        first.release()  # ...and handed the slot before it runs again: it must pass it on
    assert len(got) == 1 and got[0].agent.slots_processing == 1
    assert buffer.current == 0


async def test_count_changes_are_announced() -> None:
    _, buffer = make(slots=None)
    seen = buffer.version
    async with trio.open_nursery() as nursery:
        nursery.start_soon(buffer.claim)
        with trio.fail_after(1):
            seen = await buffer.wait_changed(seen)
        assert buffer.current == 1
        nursery.cancel_scope.cancel()
    assert buffer.version > seen


async def test_a_waiter_for_another_kind_of_agent_does_not_hold_up_those_behind_it() -> None:
    pool, buffer = make(slots=1)
    pool.register(llama_server_agent("l", slots=1))
    engine_claim = await buffer.claim()
    llama_claim = await buffer.claim(wants=LLAMA_SERVER_AGENT)
    assert (engine_claim.agent.id, llama_claim.agent.id) == ("a", "l")
    served: list[str] = []

    async def wait(name: str, wants: AgentWants) -> None:
        claim = await buffer.claim(wants=wants)
        served.append(f"{name} on {claim.agent.id}")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait, "older, for llama-server", LLAMA_SERVER_AGENT)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(wait, "newer, for engine", AgentWants())
        await trio.testing.wait_all_tasks_blocked()
        engine_claim.release()
        await trio.testing.wait_all_tasks_blocked()
        assert served == ["newer, for engine on a"]
        llama_claim.release()
    assert served == ["newer, for engine on a", "older, for llama-server on l"]


async def test_a_model_is_served_only_by_the_agents_that_serve_it() -> None:
    pool, buffer = make(slots=None, timeout=0.5)
    pool.register(llama_server_agent("q", slots=1, model_name="qwen"))
    pool.register(llama_server_agent("g", slots=1, model_name="gemma"))
    claim = await buffer.claim(wants=AgentWants(AgentKind.LLAMA_SERVER, "gemma"))
    assert claim.agent.id == "g"
    with pytest.raises(BufferTimeout):  # the gemma agent is busy: the free qwen slot is no use
        await buffer.claim(wants=AgentWants(AgentKind.LLAMA_SERVER, "gemma"))
    assert (await buffer.claim(wants=AgentWants(AgentKind.LLAMA_SERVER, "qwen.gguf"))).agent.id == "q"  # its file name
    assert pool.any_serving(AgentWants(AgentKind.LLAMA_SERVER, "gemma")) is claim.agent  # metadata needs no free slot
