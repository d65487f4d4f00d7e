"""The agent socket's handshake (spec 5): Version first, then RegisterAgent, nothing else counts."""

from __future__ import annotations

import json

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from paddler_trio.management import agent_socket
from paddler_trio.protocol import RegisterAgentNotification, to_json
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
