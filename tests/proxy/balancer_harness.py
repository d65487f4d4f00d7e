"""Runs the real balancer (in-process, on free loopback ports) for service tests, with helpers
to talk to it over HTTP, NDJSON, SSE and WebSockets and to attach scripted fake agents."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx
import trio

from paddler_trio.balancer_config import BalancerConfig
from paddler_trio.cli_values import socket_address
from paddler_trio.nursery.balancer import BalancerAddresses, serve_balancer
from paddler_trio.proxy.shutdown_signal import ShutdownSignal
from tests.proxy.scripted_fake_agent import ScriptedFakeAgent
from tests.waiting import WAIT_LIMIT, wait_until

TEARDOWN_GRACE = 0.2


@attrs.define
class BalancerUnderTest:
    addresses: BalancerAddresses
    http: httpx.AsyncClient
    nursery: trio.Nursery
    shutdown: ShutdownSignal

    @property
    def inference(self) -> str:
        return f"http://{self.addresses.inference}"

    @property
    def management(self) -> str:
        return f"http://{self.addresses.management}"

    @property
    def inference_socket_url(self) -> str:
        return f"ws://{self.addresses.inference}/api/v1/inference_socket"

    async def agents(self) -> list[dict[str, Any]]:
        response = await self.http.get(f"{self.management}/api/v1/agents")
        response.raise_for_status()
        return response.json()["agents"]

    async def buffered(self) -> int:
        response = await self.http.get(f"{self.management}/api/v1/buffered_requests")
        return response.json()["buffered_requests_current"]

    async def slots_processing(self) -> int:
        return sum(agent["slots_processing"] for agent in await self.agents())

    async def add_agent(self, **script: Any) -> ScriptedFakeAgent:
        """Start a scripted fake agent and wait until the balancer lists it."""
        agent = ScriptedFakeAgent(self.addresses.management, **script)
        await self.nursery.start(agent.run)
        await wait_until(lambda: self.lists(agent.agent_id))
        return agent

    async def lists(self, agent_id: str) -> bool:
        """Whether `/api/v1/agents` lists the agent `agent_id`."""
        return any(agent["id"] == agent_id for agent in await self.agents())

    async def post_ndjson(
        self, path: str, body: Any, messages: list[dict[str, Any]] | None = None
    ) -> list[dict[str, Any]]:
        """POST and read the whole NDJSON stream; appended to `messages` as they come, when given."""
        messages = [] if messages is None else messages
        async with self.http.stream("POST", f"{self.inference}{path}", json=body) as response:
            assert response.status_code == 200, (response.status_code, await response.aread())
            assert response.headers["content-type"] == "application/json"
            async for line in response.aiter_lines():
                if line.strip():
                    messages.append(json.loads(line))
            return messages

    async def raw_prompt(
        self, prompt: str = "Hi", max_tokens: int = 8, messages: list[dict[str, Any]] | None = None
    ) -> list[dict[str, Any]]:
        body = {"raw_prompt": prompt, "max_tokens": max_tokens}
        return await self.post_ndjson("/api/v1/continue_from_raw_prompt", body, messages)


@asynccontextmanager
async def running_balancer(**config: Any) -> AsyncIterator[BalancerUnderTest]:
    settings: dict[str, Any] = {
        "inference_addr": socket_address("127.0.0.1:0"),
        "management_addr": socket_address("127.0.0.1:0"),
        "buffered_request_timeout": 3.0,
        "inference_item_timeout": 3.0,
    }
    settings.update(config)
    shutdown = ShutdownSignal()
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(serve_balancer, BalancerConfig(**settings), shutdown)
        async with httpx.AsyncClient(timeout=WAIT_LIMIT) as http:
            yield BalancerUnderTest(addresses, http, nursery, shutdown)
        shutdown.trigger()
        # The graceful path is tested on its own; here it would only wait out Hypercorn's ping task.
        nursery.cancel_scope.deadline = trio.current_time() + TEARDOWN_GRACE


def content_of(messages: list[dict[str, Any]]) -> str:
    return "".join(
        message["Response"]["response"]["GeneratedToken"]["ContentToken"]
        for message in messages
        if "Response" in message and "ContentToken" in message["Response"]["response"].get("GeneratedToken", {})
    )


def errors_of(messages: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return [(m["Error"]["error"]["code"], m["Error"]["error"]["description"]) for m in messages if "Error" in m]
