"""Desired state -> applicable state -> SetState to every agent (spec 4.3)."""

from __future__ import annotations

from typing import Any

import attrs
import trio
import trio.testing

from paddler_trio.management.reconciliation import Reconciliation
from paddler_trio.management.state_database import MemoryStateDatabase
from paddler_trio.proxy.agent_controller import AgentController
from paddler_trio.proxy.agent_pool import AgentPool
from paddler_trio.protocol import BalancerDesiredState, InferenceParameters, SetStateNotification
from tests.proxy.scripted_fake_agent import status_snapshot


def controller(agent_id: str, capacity: int = 10) -> tuple[AgentController, trio.MemoryReceiveChannel[Any]]:
    send, receive = trio.open_memory_channel[Any](capacity)
    agent = AgentController(id=agent_id, name=None, status=status_snapshot(slots=1, model_path=None), outbox=send)
    return agent, receive


async def test_every_stored_state_reaches_every_agent_and_flips_the_mode(autojump_clock: trio.testing.MockClock) -> None:
    database, pool = MemoryStateDatabase(), AgentPool()
    first, first_outbox = controller("a")
    pool.register(first)
    reconciliation = Reconciliation(database, pool)
    async with trio.open_nursery() as nursery:
        await nursery.start(reconciliation.run)
        assert reconciliation.token_generation_enabled
        assert await first_outbox.receive() == SetStateNotification(
            BalancerDesiredState.default().to_agent_desired_state()
        )
        embeddings = attrs.evolve(
            BalancerDesiredState.default(), inference_parameters=InferenceParameters(enable_embeddings=True)
        )
        version = reconciliation.version
        await database.store(embeddings)
        await reconciliation.wait_changed(version)
        assert not reconciliation.token_generation_enabled
        assert (await first_outbox.receive()).desired_state == embeddings.to_agent_desired_state()
        nursery.cancel_scope.cancel()


async def test_an_agent_whose_queue_is_full_is_retried_every_second(autojump_clock: trio.testing.MockClock) -> None:
    database, pool = MemoryStateDatabase(), AgentPool()
    stuck, outbox = controller("stuck", capacity=1)
    stuck.outbox.send_nowait("something queued before")
    pool.register(stuck)
    reconciliation = Reconciliation(database, pool)
    async with trio.open_nursery() as nursery:
        await nursery.start(reconciliation.run)
        assert await outbox.receive() == "something queued before"
        await trio.sleep(1.5)  # mock clock: past the one-second retry, not past a second one
        assert isinstance(outbox.receive_nowait(), SetStateNotification)
        nursery.cancel_scope.cancel()
