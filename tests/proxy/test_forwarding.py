"""One request's forwarding loop, driven directly through an agent controller's outbox and routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from paddler_trio.proxy.agent_controller import AgentController
from paddler_trio.proxy.agent_pool import AgentPool
from paddler_trio.proxy.buffer import RequestBuffer
from paddler_trio.proxy.forwarding import AGENT_REJOIN_GRACE, RequestForwarder
from paddler_trio.proxy.shutdown_signal import ShutdownSignal
from paddler_trio.protocol import (
    ContentToken,
    ContinueFromRawPromptParams,
    ErrorEnvelope,
    GenerationDone,
    RequestEnvelope,
    ResponseEnvelope,
    StopRespondingToNotification,
    TokenUsage,
)
from tests.proxy.scripted_fake_agent import status_snapshot
from tests.waiting import wait_until

PARAMS = ContinueFromRawPromptParams(raw_prompt="Hi", max_tokens=4)
DONE = GenerationDone(usage=TokenUsage())


@attrs.define
class Wire:
    """An agent with no socket: the test reads its outbox and delivers its replies."""

    agent: AgentController
    outbox: trio.MemoryReceiveChannel[Any]

    async def next_request_id(self) -> str:
        message = await self.outbox.receive()
        assert isinstance(message, RequestEnvelope), message
        return message.id

    def reply(self, request_id: str, response: Any) -> None:
        self.agent.deliver(request_id, ResponseEnvelope(generated_by=None, request_id=request_id, response=response))


@attrs.define
class Setup:
    pool: AgentPool
    buffer: RequestBuffer
    forwarder: RequestForwarder
    shutdown: ShutdownSignal
    received: list[Any]
    nursery: trio.Nursery

    def add_agent(self, agent_id: str, slots: int = 1) -> Wire:
        send, receive = trio.open_memory_channel[Any](100)
        agent = AgentController(
            id=agent_id, name=agent_id, status=status_snapshot(slots=slots, model_path="/m.gguf"), outbox=send
        )
        self.pool.register(agent)
        return Wire(agent, receive)

    async def emit(self, message: Any) -> None:
        self.received.append(message)

    def start(self, request_id: str = "client-1") -> trio.CancelScope:
        scope = trio.CancelScope()

        async def run() -> None:
            with scope:
                await self.forwarder.serve(request_id, PARAMS, self.emit)

        self.nursery.start_soon(run)
        return scope


@asynccontextmanager
async def setup(item_timeout: float = 1.0) -> AsyncIterator[Setup]:
    pool = AgentPool()
    buffer = RequestBuffer(pool, max_buffered_requests=10, buffered_request_timeout=5.0)
    shutdown = ShutdownSignal()
    async with trio.open_nursery() as nursery:
        forwarder = RequestForwarder(buffer=buffer, shutdown=shutdown, item_timeout=item_timeout)
        await nursery.start(forwarder.run)
        yield Setup(pool, buffer, forwarder, shutdown, [], nursery)
        nursery.cancel_scope.cancel()


def errors(received: list[Any]) -> list[tuple[int, str]]:
    return [(m.error.code, m.error.description) for m in received if isinstance(m, ErrorEnvelope)]


async def test_replies_reach_the_client_under_its_id_with_the_agent_name() -> None:
    async with setup() as s:
        wire = s.add_agent("agent-a")
        s.start("mine")
        agent_request_id = await wire.next_request_id()
        assert agent_request_id != "mine"
        wire.reply(agent_request_id, ContentToken("Hi"))
        wire.reply(agent_request_id, DONE)
        await trio.testing.wait_all_tasks_blocked()
        assert [(m.generated_by, m.request_id, m.response) for m in s.received] == [
            ("agent-a", "mine", ContentToken("Hi")),
            ("agent-a", "mine", DONE),
        ]
        assert s.pool.slots_processing == 0


async def test_a_route_closed_without_terminal_is_a_502() -> None:
    async with setup() as s:
        wire = s.add_agent("a")
        s.start()
        agent_request_id = await wire.next_request_id()
        wire.agent.close_route(agent_request_id)
        await trio.testing.wait_all_tasks_blocked()
        assert errors(s.received) == [(502, "Response channel closed before terminator")]
        assert s.pool.slots_processing == 0


async def test_agent_lost_after_output_is_a_502() -> None:
    async with setup() as s:
        wire = s.add_agent("a")
        s.add_agent("b")
        s.start()
        agent_request_id = await wire.next_request_id()
        wire.reply(agent_request_id, ContentToken("x"))
        await trio.testing.wait_all_tasks_blocked()
        s.pool.deregister(wire.agent)
        await trio.testing.wait_all_tasks_blocked()
        assert errors(s.received) == [(502, "Agent controller connection closed")]
        assert s.pool.slots_processing == 0


async def test_agent_lost_before_output_is_dispatched_again_once() -> None:
    async with setup() as s:
        first = s.add_agent("a")
        s.start()
        await first.next_request_id()
        second = s.add_agent("b")
        s.pool.deregister(first.agent)
        retried = await second.next_request_id()
        third = s.add_agent("c")
        s.pool.deregister(second.agent)
        await trio.testing.wait_all_tasks_blocked()
        assert errors(s.received) == [(502, "Agent controller connection closed")]
        assert third.outbox.statistics().current_buffer_used == 0
        assert retried
        assert s.pool.slots_processing == 0


async def test_agent_lost_before_output_with_none_left_is_a_502_after_the_rejoin_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """As in Paddler, a 502, not the buffer's 504; but only once no agent joined for a while."""
    async with setup() as s:
        only = s.add_agent("a")
        s.start()
        await only.next_request_id()
        lost_at = trio.current_time()
        s.pool.deregister(only.agent)
        await wait_until(lambda: s.received)
        assert errors(s.received) == [(502, "Agent controller connection closed")]
        assert trio.current_time() - lost_at == pytest.approx(AGENT_REJOIN_GRACE, abs=0.2)
        assert s.buffer.current == 0
        assert s.pool.slots_processing == 0


async def test_agent_lost_before_output_is_served_by_an_agent_that_joins_within_the_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A link that drops and comes back (the agent reconnects every second) still serves it."""
    async with setup() as s:
        first = s.add_agent("a")
        s.start("mine")
        await first.next_request_id()
        s.pool.deregister(first.agent)
        await trio.sleep(AGENT_REJOIN_GRACE / 2)
        assert s.received == []
        back = s.add_agent("a")
        retried = await back.next_request_id()
        back.reply(retried, DONE)
        await trio.testing.wait_all_tasks_blocked()
        assert [(m.generated_by, m.request_id, m.response) for m in s.received] == [("a", "mine", DONE)]
        assert s.pool.slots_processing == 0


async def test_item_timeout_answers_504_then_drains_until_the_agent_confirms(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with setup(item_timeout=2.0) as s:
        wire = s.add_agent("a")
        s.start()
        agent_request_id = await wire.next_request_id()
        await trio.sleep(2.5)
        assert errors(s.received) == [
            (
                504,
                "Inference timed out after 2000ms waiting for next token. "
                "Increase --inference-item-timeout if the prompt requires longer processing.",
            )
        ]
        assert await wire.outbox.receive() == StopRespondingToNotification(agent_request_id)
        assert s.pool.slots_processing == 1  # still draining
        wire.reply(agent_request_id, DONE)
        await trio.testing.wait_all_tasks_blocked()
        assert s.pool.slots_processing == 0
        assert len(s.received) == 1  # nothing after the 504 reaches the client


async def test_a_silent_agent_releases_the_slot_after_a_second_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async with setup(item_timeout=2.0) as s:
        s.add_agent("a")
        s.start()
        await trio.sleep(3.0)
        assert s.pool.slots_processing == 1
        await trio.sleep(2.0)
        assert s.pool.slots_processing == 0


async def test_a_client_that_leaves_stops_the_agent_and_frees_the_slot_on_done() -> None:
    async with setup() as s:
        wire = s.add_agent("a")
        scope = s.start()
        agent_request_id = await wire.next_request_id()
        wire.reply(agent_request_id, ContentToken("x"))
        await trio.testing.wait_all_tasks_blocked()
        scope.cancel()
        assert await wire.outbox.receive() == StopRespondingToNotification(agent_request_id)
        assert s.pool.slots_processing == 1
        wire.reply(agent_request_id, ContentToken("late"))
        wire.reply(agent_request_id, DONE)
        await trio.testing.wait_all_tasks_blocked()
        assert s.pool.slots_processing == 0
        assert len(s.received) == 1


async def test_shutdown_answers_503_to_waiting_and_streaming_requests() -> None:
    async with setup() as s:
        wire = s.add_agent("a")
        s.start("streaming")
        await wire.next_request_id()
        s.start("waiting")
        await trio.testing.wait_all_tasks_blocked()
        s.shutdown.trigger()
        await trio.testing.wait_all_tasks_blocked()
        assert sorted((m.request_id, m.error.code, m.error.description) for m in s.received) == [
            ("streaming", 503, "balancer is shutting down"),
            ("waiting", 503, "balancer is shutting down"),
        ]
        s.nursery.cancel_scope.cancel()


async def test_a_slot_on_an_agent_that_left_before_dispatch_is_dispatched_elsewhere() -> None:
    async with setup() as s:
        first = s.add_agent("a")
        blocker = await s.buffer.claim()  # holds a's only slot
        s.start()
        await trio.testing.wait_all_tasks_blocked()
        blocker.release()  # hands a's slot to the waiting request...
        s.pool.deregister(first.agent)  # ...whose agent leaves before the request runs again
        second = s.add_agent("b")
        assert await second.next_request_id()
        assert first.outbox.statistics().current_buffer_used == 0
        s.nursery.cancel_scope.cancel()
