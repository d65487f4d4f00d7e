"""The agent socket (spec 5): Version first, then RegisterAgent, nothing else counts; an agent
whose link breaks leaves the pool before anything could be handed to it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, open_websocket_url

from paddler_trio.management import agent_socket
from paddler_trio.management.reconciliation import Reconciliation
from paddler_trio.management.state_database import MemoryStateDatabase
from paddler_trio.protocol import RegisterAgentNotification, StopRespondingToNotification, to_json
from paddler_trio.proxy.agent_controller import AgentController
from paddler_trio.proxy.agent_pool import AgentPool
from paddler_trio.proxy.shutdown_signal import ShutdownSignal
from tests.proxy.balancer_harness import running_balancer, wait_until
from tests.proxy.scripted_fake_agent import status_snapshot

REGISTER = to_json(RegisterAgentNotification(name="late", slot_aggregated_status_snapshot=status_snapshot(slots=1, model_path="/m")))


async def test_messages_before_registration_are_ignored_then_registration_works() -> None:
    async with running_balancer() as balancer:
        url = f"ws://{balancer.addresses.management}/api/v1/agent_socket/agent-1"
        async with open_websocket_url(url) as ws:
            assert json.loads(await ws.get_message()) == {"Notification": {"Version": {"version": "4.1.0"}}}
            await ws.send_message("not json")
            await ws.send_message(json.dumps({"Notification": "DeregisterAgent"}))
            await ws.send_message(REGISTER)
            set_state = json.loads(await ws.get_message())
            assert set_state["Notification"]["SetState"]["desired_state"]["model"] == "None"
            await wait_until(lambda: _has_agent(balancer))
            await ws.send_message(json.dumps({"Notification": "DeregisterAgent"}))
            with pytest.raises(ConnectionClosed):
                with trio.fail_after(5):
                    await ws.get_message()
        assert await balancer.agents() == []


async def _has_agent(balancer) -> bool:  # type: ignore[no-untyped-def]
    return len(await balancer.agents()) == 1


async def test_an_agent_that_never_registers_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_socket, "REGISTRATION_TIMEOUT", 0.2)
    async with running_balancer() as balancer:
        url = f"ws://{balancer.addresses.management}/api/v1/agent_socket/silent"
        async with open_websocket_url(url) as ws:
            await ws.get_message()  # Version
            with pytest.raises(ConnectionClosed) as closed:
                with trio.fail_after(5):
                    await ws.get_message()
            assert closed.value.reason.code == 1008
            assert closed.value.reason.reason == "expected RegisterAgent"


class _LinkThatBreaksOnWrite:
    """A `MessageSocket` test double for an agent's link: the agent registers, then, once
    `broken`, every write fails as a broken TCP connection does."""

    def __init__(self) -> None:
        self.broken = False
        self._incoming = [REGISTER]

    async def accept(self) -> None:
        pass

    async def receive(self) -> str | bytes:
        if self._incoming:
            return self._incoming.pop(0)
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def consume(self, take: Callable[[str | bytes], bool]) -> None:
        await trio.sleep_forever()

    async def send_texts(self, texts: Iterable[str]) -> None:
        await trio.lowlevel.checkpoint()
        if self.broken:
            raise trio.BrokenResourceError("the agent's link broke")

    async def close(self, code: int, reason: str | None = None) -> None:
        pass


async def test_an_agent_whose_link_fails_a_write_leaves_the_pool_before_its_queue_closes() -> None:
    """Once nothing can reach the agent, no request may be handed to it (it would get a 500
    "Failed to generate response" instead of going to another agent)."""
    pool = AgentPool()
    socket = _LinkThatBreaksOnWrite()
    handler = agent_socket.AgentSocket(pool, Reconciliation(MemoryStateDatabase(), pool), ShutdownSignal())
    seen_unreachable_but_listed = False

    async def watch(agent: AgentController) -> None:
        nonlocal seen_unreachable_but_listed
        while pool.get(agent.id) is not None:
            if agent.outbox.statistics().open_receive_channels == 0:
                seen_unreachable_but_listed = True
            await trio.lowlevel.checkpoint()

    async def serve() -> None:
        with pytest.RaisesGroup(trio.BrokenResourceError, flatten_subgroups=True):  # the front drops the connection
            await handler.serve(socket, "agent-1")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            while pool.get("agent-1") is None:
                await trio.lowlevel.checkpoint()
            agent = pool.get("agent-1")
            assert agent is not None
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(watch, agent)
            socket.broken = True
            agent.outbox.send_nowait(StopRespondingToNotification("any"))
    assert pool.get("agent-1") is None
    assert not seen_unreachable_but_listed
