"""The agent's supervision tree: signals, reconciliation (owns the engine) and the management
link (owns the requests it carries). On SIGINT/SIGTERM the link stops taking requests
(cancelling those in flight), flushes, sends DeregisterAgent and closes its socket cleanly;
then the root scope is cancelled and the engine closes. A second signal exits at once."""

from __future__ import annotations

import logging

import trio

from paddler_trio.agent.agent_config import AgentConfig
from paddler_trio.agent.agent_id import new_agent_id
from paddler_trio.agent.engine_holder import EngineHolder
from paddler_trio.agent.management_link import ManagementLink
from paddler_trio.agent.reconciliation import Reconciliation
from paddler_trio.agent.status import AgentStatus
from paddler_trio.nursery.signals import cancel_on_signals
from paddler_trio.security.tls import client_ssl_context

_logger = logging.getLogger(__name__)


async def run_agent(config: AgentConfig, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Run until SIGINT/SIGTERM; reports the agent id once every service is up."""
    stop = trio.Event()
    async with trio.open_nursery() as root:
        signalled = trio.CancelScope()
        root.start_soon(_stop_when_cancelled, signalled, stop)
        await root.start(cancel_on_signals, signalled)
        await serve_agent(config, stop, task_status=task_status)
        root.cancel_scope.cancel()


async def _stop_when_cancelled(scope: trio.CancelScope, stop: trio.Event) -> None:
    with scope:
        await trio.sleep_forever()
    stop.set()


async def serve_agent(
    config: AgentConfig, stop: trio.Event, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run until `stop` is set (for embedding in a larger Trio program such as quickstart)."""
    agent_id = new_agent_id()
    status = AgentStatus(desired_slots_total=config.slots)
    engines = EngineHolder()
    reconciliation = Reconciliation(
        status, engines, slots=config.slots, threads=config.threads, allow_amx=config.allow_amx, agent_name=config.name
    )
    link = ManagementLink(
        config.agent_socket_base_url + agent_id,
        name=config.name,
        status=status,
        engines=engines,
        reconciliation=reconciliation,
        agent_secret=config.agent_secret,
        ssl_context=client_ssl_context(config.management_ca_file) if config.management_tls else None,
    )
    _logger.info(
        "agent %s%s with %d slots joining the balancer at %s",
        agent_id,
        f" ({config.name})" if config.name else "",
        config.slots,
        config.management_addr,
    )
    async with trio.open_nursery() as root:
        await root.start(reconciliation.run)
        await root.start(link.run)
        task_status.started(agent_id)
        await stop.wait()
        # Deregister while the socket is still served, then stop everything else.
        await link.leave()
        root.cancel_scope.cancel()
    _logger.info("agent %s stopped", agent_id)
