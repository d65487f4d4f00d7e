"""Upgrades to the agents' socket: an agent gets the same socket (reply batching and status
extensions offered, `Version` first) whichever way it sends the agent secret; the agent id in the
path is percent-decoded; the status extensions an agent reports show in `/api/v1/agents`. Real
balancer, real trio-websocket clients."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
from trio_websocket import HandshakeError, WebSocketConnection, open_websocket_url

from paddler_trio.protocol import RegisterAgentNotification, to_json
from paddler_trio.protocol.reply_batching import (
    REPLY_BATCHING_HEADER,
    REPLY_BATCHING_VERSION,
)
from paddler_trio.protocol.status_extensions import STATUS_EXTENSIONS_HEADER, STATUS_EXTENSIONS_VERSION
from tests.proxy.balancer_harness import BalancerUnderTest, running_balancer, wait_until
from tests.proxy.scripted_fake_agent import status_snapshot

SECRET = "join-secret"


async def register(socket: WebSocketConnection, name: str, **status_extensions: int | str) -> dict[str, Any]:
    """Read the balancer's first message, register (with `status_extensions` in the snapshot), and
    return that first message."""
    version = json.loads(await socket.get_message())
    snapshot = attrs.evolve(status_snapshot(slots=1, model_path=None), **status_extensions)
    await socket.send_message(to_json(RegisterAgentNotification(name=name, slot_aggregated_status_snapshot=snapshot)))
    return version


async def listed_agents(balancer: BalancerUnderTest) -> dict[str, str | None]:
    return {agent["id"]: agent["name"] for agent in await balancer.agents()}


async def test_an_agent_gets_the_same_socket_with_its_secret_in_a_header_or_in_the_query() -> None:
    async with running_balancer(agent_secret=SECRET) as balancer:
        base = f"ws://{balancer.addresses.management}/api/v1/agent_socket"
        async with (
            open_websocket_url(f"{base}/by-header", extra_headers=[("Authorization", f"Bearer {SECRET}")]) as by_header,
            open_websocket_url(f"{base}/by-query?api_key={SECRET}") as by_query,
        ):
            for socket in (by_header, by_query):
                offered = dict(socket.handshake_headers)
                assert offered[REPLY_BATCHING_HEADER.encode()] == REPLY_BATCHING_VERSION.encode()
                assert offered[STATUS_EXTENSIONS_HEADER.encode()] == STATUS_EXTENSIONS_VERSION.encode()
            first_messages = [await register(by_header, "header"), await register(by_query, "query")]
            assert first_messages[0] == first_messages[1]
            assert "Version" in first_messages[0]["Notification"]
            await wait_until(lambda: listed_agents_are(balancer, {"by-header": "header", "by-query": "query"}))
        await wait_until(lambda: listed_agents_are(balancer, {}))


async def listed_agents_are(balancer: BalancerUnderTest, expected: dict[str, str | None]) -> bool:
    return await listed_agents(balancer) == expected


async def test_an_agent_id_in_the_path_is_percent_decoded() -> None:
    async with running_balancer() as balancer:
        url = f"ws://{balancer.addresses.management}/api/v1/agent_socket/rack%204%20gpu%200"
        async with open_websocket_url(url) as socket:
            await register(socket, "encoded")
            await wait_until(lambda: listed_agents_are(balancer, {"rack 4 gpu 0": "encoded"}))


async def test_agents_show_the_status_extensions_they_report_and_others_stay_exactly_paddlers() -> None:
    cache = {
        "cache_states": 3,
        "cache_used_bytes": 5 * 2**20,
        "cache_limit_bytes": 1024 * 2**20,
        "multimodal_projection_path": "/models/mmproj-m.gguf",
    }
    async with running_balancer() as balancer:
        base = f"ws://{balancer.addresses.management}/api/v1/agent_socket"
        async with open_websocket_url(f"{base}/ours") as ours, open_websocket_url(f"{base}/paddlers") as paddlers:
            await register(ours, "ours", **cache)
            await register(paddlers, "paddlers")
            await wait_until(lambda: listed_agents_are(balancer, {"ours": "ours", "paddlers": "paddlers"}))
            agents = {agent["id"]: agent for agent in await balancer.agents()}
            assert {key: agents["ours"][key] for key in cache} == cache
            assert not set(cache) & set(agents["paddlers"])
            assert set(agents["ours"]) - set(cache) == set(agents["paddlers"])


async def test_a_path_with_a_slash_in_the_agent_id_is_not_an_agent_socket() -> None:
    async with running_balancer() as balancer:
        with pytest.raises(HandshakeError):
            async with open_websocket_url(f"ws://{balancer.addresses.management}/api/v1/agent_socket/a/b"):
                pass
        assert await listed_agents(balancer) == {}
