"""The supervision tree of an agent that watches a llama-server (`paddler agent --local-llamacpp-addr`):
signals, the llama-server monitor and the management link.

The monitor's first poll is done before the link joins the balancer, so the agent registers with
llama-server's slots, model and issues, not with an empty status. Such an agent has no engine: it
takes no desired state and no requests over its link (our balancer sends it none; clients reach
llama-server directly or through the balancer's reverse proxy). On SIGINT/SIGTERM it deregisters
and exits: there is nothing to drain.
"""

from __future__ import annotations

import logging

import trio

from paddler_trio.agent.agent_id import new_agent_id
from paddler_trio.agent.engine_holder import EngineHolder
from paddler_trio.agent.llama_server_agent_config import LlamaServerAgentConfig
from paddler_trio.agent.llamacpp_monitor import LlamaServerMonitor
from paddler_trio.agent.balancer_links import describe_balancers, leave_all, links_to_balancers, start_links
from paddler_trio.agent.status import AgentStatus
from paddler_trio.nursery.signals import serve_until_signalled
from paddler_trio.protocol import AgentDesiredState

_logger = logging.getLogger(__name__)


async def run_llama_server_agent(
    config: LlamaServerAgentConfig, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run until SIGINT/SIGTERM; reports the agent id once every service is up."""
    await serve_until_signalled(serve_llama_server_agent, config, task_status=task_status)


async def serve_llama_server_agent(
    config: LlamaServerAgentConfig, stop: trio.Event, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run until `stop` is set."""
    agent_id = new_agent_id()
    status = AgentStatus(desired_slots_total=0)
    monitor = LlamaServerMonitor(
        status,
        local_addr=config.local_llamacpp_addr,
        external_addr=config.external_llamacpp_addr,
        api_key=config.llamacpp_api_key,
        interval=config.monitoring_interval,
    )
    links = links_to_balancers(
        config.management_addrs,
        agent_id,
        name=config.name,
        status=status,
        engines=EngineHolder(),
        on_desired_state=_ignore_desired_state,
        agent_secret=config.agent_secret,
        tls=config.management_tls,
        ca_file=config.management_ca_file,
    )
    _logger.info(
        "agent %s%s watching llama-server at %s (reported as %s) every %g ms, joining %s",
        agent_id,
        f" ({config.name})" if config.name else "",
        config.local_llamacpp_addr,
        config.external_llamacpp_addr,
        config.monitoring_interval * 1000,
        describe_balancers(config.management_addrs),
    )
    async with trio.open_nursery() as root:
        await root.start(monitor.run)
        await start_links(root, links)
        task_status.started(agent_id)
        await stop.wait()
        await leave_all(links)
        root.cancel_scope.cancel()
    _logger.info("agent %s stopped", agent_id)


def _ignore_desired_state(_: AgentDesiredState) -> None:
    # Our balancer never sends one to this kind of agent; a Paddler 4.x balancer does not know the kind.
    _logger.warning("the balancer sent a desired state (model, parameters): ignored, this agent watches a llama-server")

