"""`paddler quickstart`: a balancer and one agent in one process, under one root nursery.

Start-up: the balancer's services (listening), the desired state (the given model with
Paddler's default inference parameters), then the agent; once the agent reports its slots
the addresses and a first request are printed. SIGINT/SIGTERM: the agent deregisters
first, then the balancer drains and stops.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import attrs
import httpx
import trio

from paddler_trio.agent.agent_config import AgentConfig
from paddler_trio.balancer_config import BalancerConfig
from paddler_trio.cli_values import DEFAULT_CACHE_RAM_MIB, DEFAULT_SHUTDOWN_GRACE_PERIOD, socket_address
from paddler_trio.nursery.agent import serve_agent
from paddler_trio.nursery.balancer import BalancerAddresses, serve_balancer
from paddler_trio.nursery.signals import stop_on_signals
from paddler_trio.protocol import BalancerDesiredState, InferenceParameters, LocalToAgentModel, NoModel, to_json
from paddler_trio.proxy.shutdown_signal import ShutdownSignal

_logger = logging.getLogger(__name__)

AGENT_NAME = "quickstart"


@attrs.frozen
class QuickstartConfig:
    model_path: Path
    slots: int
    balancer: BalancerConfig
    threads: int | None = None
    allow_amx: bool = False
    cache_ram_mib: int = DEFAULT_CACHE_RAM_MIB
    shutdown_grace_period: float = DEFAULT_SHUTDOWN_GRACE_PERIOD


def first_request_banner(addresses: BalancerAddresses, model_path: Path, slots: int) -> str:
    body = '{"add_generation_prompt":true,"enable_thinking":false,"max_tokens":64,"conversation_history":[{"role":"user","content":"Write a haiku about load balancers."}]}'
    return "\n".join(
        [
            "",
            f"paddler quickstart is serving {model_path.name} with {slots} slots.",
            f"  inference service:   http://{addresses.inference}",
            f"  management service:  http://{addresses.management}  (agents: /api/v1/agents, metrics: /metrics)",
            *([f"  web admin panel:     http://{addresses.web_admin_panel}"] if addresses.web_admin_panel else []),
            f"  terminal dashboard:  paddler dashboard --management-addr {addresses.management}",
            "",
            "Send a first request:",
            f"  curl -N http://{addresses.inference}/api/v1/continue_from_conversation_history \\",
            "    -H 'Content-Type: application/json' \\",
            f"    -d '{body}'",
            "",
            "Press Ctrl-C to stop.",
            "",
        ]
    )


async def _put_desired_state(management: str, model_path: Path) -> None:
    state = BalancerDesiredState(
        chat_template_override=None,
        inference_parameters=InferenceParameters(),
        model=LocalToAgentModel(str(model_path)),
        multimodal_projection=NoModel(),
        use_chat_template_override=False,
    )
    async with httpx.AsyncClient() as client:
        response = await client.put(
            f"http://{management}/api/v1/balancer_desired_state",
            content=to_json(state),
            headers={"Content-Type": "application/json"},
        )
        response.raise_for_status()


async def _wait_for_agent(management: str) -> None:
    async with httpx.AsyncClient() as client:
        while True:
            agents = (await client.get(f"http://{management}/api/v1/agents")).json()["agents"]
            ready = [agent for agent in agents if agent["name"] == AGENT_NAME and agent["slots_total"] > 0]
            if ready:
                return
            issues = [issue for agent in agents for issue in agent["issues"]]
            if issues:
                _logger.error("the agent reports issues: %s", issues)
            await trio.sleep(0.2)


def _print_now(text: str) -> None:
    print(text, flush=True)


async def run_quickstart(config: QuickstartConfig, announce: Callable[[str], None] = _print_now) -> None:
    """Until SIGINT/SIGTERM: then the balancer refuses new requests, the agent drains (its
    requests in flight finish through the balancer) and deregisters, and the balancer stops."""
    shutdown = ShutdownSignal()
    stop = trio.Event()

    def drain() -> None:
        shutdown.begin_drain()
        stop.set()

    async with trio.open_nursery() as root:
        await root.start(stop_on_signals, drain)
        async with trio.open_nursery() as services:
            addresses: BalancerAddresses = await services.start(serve_balancer, config.balancer, shutdown)
            await _put_desired_state(addresses.management, config.model_path)
            agent_config = AgentConfig(
                management_addrs=(socket_address(addresses.management),),
                slots=config.slots,
                name=AGENT_NAME,
                threads=config.threads,
                allow_amx=config.allow_amx,
                cache_ram_mib=config.cache_ram_mib,
                shutdown_grace_period=config.shutdown_grace_period,
            )
            async with trio.open_nursery() as agent_nursery:
                await agent_nursery.start(serve_agent, agent_config, stop)
                banner = first_request_banner(addresses, config.model_path, config.slots)
                agent_nursery.start_soon(_announce_when_ready, addresses.management, banner, announce, stop)
            shutdown.trigger()
        root.cancel_scope.cancel()


async def _announce_when_ready(management: str, banner: str, announce: Callable[[str], None], stop: trio.Event) -> None:
    """Print the banner once the agent serves, unless the quickstart is stopped first."""
    async with trio.open_nursery() as nursery:

        async def give_up_at_stop() -> None:
            await stop.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(give_up_at_stop)
        await _wait_for_agent(management)
        announce(banner)
        nursery.cancel_scope.cancel()
