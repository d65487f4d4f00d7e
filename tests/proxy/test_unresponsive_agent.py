"""An agent whose request hit the item timeout takes no new work until it answers again."""

from __future__ import annotations

from tests.proxy.balancer_harness import (
    content_of,
    errors_of,
    running_balancer,
    wait_until,
)


async def test_agent_that_timed_out_is_skipped_until_its_next_status_update() -> None:
    async with running_balancer(inference_item_timeout=0.3, buffered_request_timeout=0.5) as balancer:
        agent = await balancer.add_agent(slots=2, frozen=True)
        first = await balancer.raw_prompt()
        assert errors_of(first)[0][0] == 504
        assert errors_of(first)[0][1].startswith("Inference timed out after 300ms")

        # A slot is free, but the agent fell silent: the request waits in the buffer instead.
        second = await balancer.raw_prompt()
        assert errors_of(second) == [(504, "Waiting for available slot timed out")]
        assert len(agent.requests) == 1

        agent.frozen = False
        await agent.report_status(slots_total=2, model_path=agent.model_path)
        third = await balancer.raw_prompt()
        assert errors_of(third) == []
        assert content_of(third) == "Hello, world"
        await wait_until(lambda: _slots_processing_is_zero(balancer))


async def _slots_processing_is_zero(balancer) -> bool:
    return await balancer.slots_processing() == 0
