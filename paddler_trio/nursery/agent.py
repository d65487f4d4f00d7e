"""The agent's supervision tree: signals, reconciliation (owns the engine) and one management
link per balancer (each owns the requests it carries).

On SIGINT/SIGTERM the agent drains: it reports no slots, so the balancer sends it nothing new
(and buffers or routes elsewhere), and lets the requests in flight finish within
`--shutdown-grace-period`. Then the link stops taking requests (cancelling any still running),
flushes, sends DeregisterAgent and closes its socket cleanly; the root scope is cancelled and the
engine closes. A second signal exits at once (nursery/signals.py)."""

from __future__ import annotations

import logging

import trio

from paddler_trio.agent.agent_config import AgentConfig
from paddler_trio.agent.agent_id import new_agent_id
from paddler_trio.agent.engine_holder import EngineHolder
from paddler_trio.agent.balancer_links import describe_balancers, leave_all, links_to_balancers, start_links
from paddler_trio.agent.reconciliation import Reconciliation
from paddler_trio.agent.status import AgentStatus
from paddler_trio.nursery.signals import serve_until_signalled

_logger = logging.getLogger(__name__)


async def run_agent(config: AgentConfig, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Run until SIGINT/SIGTERM; reports the agent id once every service is up."""
    await serve_until_signalled(serve_agent, config, task_status=task_status)


async def serve_agent(
    config: AgentConfig, stop: trio.Event, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run until `stop` is set (for embedding in a larger Trio program such as quickstart)."""
    agent_id = new_agent_id()
    status = AgentStatus(desired_slots_total=config.slots)
    engines = EngineHolder()
    reconciliation = Reconciliation(
        status,
        engines,
        slots=config.slots,
        threads=config.threads,
        allow_amx=config.allow_amx,
        cache_ram_mib=config.cache_ram_mib,
        agent_name=config.name,
    )
    links = links_to_balancers(
        config.management_addrs,
        agent_id,
        name=config.name,
        status=status,
        engines=engines,
        on_desired_state=reconciliation.set_desired_state,
        agent_secret=config.agent_secret,
        tls=config.management_tls,
        ca_file=config.management_ca_file,
    )
    _logger.info(
        "agent %s%s with %d slots and %s joining %s",
        agent_id,
        f" ({config.name})" if config.name else "",
        config.slots,
        f"a prompt state cache of up to {config.cache_ram_mib} MiB" if config.cache_ram_mib else "no prompt state cache",
        describe_balancers(config.management_addrs),
    )
    async with trio.open_nursery() as root:
        await root.start(reconciliation.run)
        await start_links(root, links)
        task_status.started(agent_id)
        await stop.wait()
        await _drain(status, config.shutdown_grace_period)
        # Deregister while the sockets are still served, then stop everything else.
        await leave_all(links)
        root.cancel_scope.cancel()
    _logger.info("agent %s stopped", agent_id)


async def _drain(status: AgentStatus, grace_period: float) -> None:
    """Report no slots from now on, and wait up to `grace_period` seconds for the requests in
    flight (including any the balancer sent before it heard of the drain) to finish."""
    status.stop_taking_requests()
    if status.slots_processing == 0:
        return
    _logger.info(
        "draining: waiting up to %.1f s for %d requests in flight to finish", grace_period, status.slots_processing
    )
    started = trio.current_time()
    with trio.move_on_after(grace_period) as waiting:
        await status.wait_until(lambda: status.slots_processing == 0)
    if waiting.cancelled_caught:
        _logger.warning(
            "shutdown grace period (%.1f s) is over: stopping %d requests still in flight",
            grace_period,
            status.slots_processing,
        )
    else:
        _logger.info("drained in %.1f s", trio.current_time() - started)
