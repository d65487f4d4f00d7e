"""An agent's links to the balancers it serves: one `ManagementLink` per `--management-addr`
(repeatable), all sharing the agent's status, engine and desired-state handler.

Each link tells its balancer the agent's slots less those the other balancers' requests hold
(`ManagementLink._snapshot`), so a single balancer sees exactly what it always did."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import trio

from paddler_trio.agent.engine_holder import EngineHolder
from paddler_trio.agent.management_link import ManagementLink
from paddler_trio.agent.status import AgentStatus
from paddler_trio.cli_values import SocketAddress
from paddler_trio.protocol import AgentDesiredState
from paddler_trio.security.tls import client_ssl_context


def links_to_balancers(
    addresses: Sequence[SocketAddress],
    agent_id: str,
    *,
    name: str | None,
    status: AgentStatus,
    engines: EngineHolder,
    on_desired_state: Callable[[AgentDesiredState], None],
    agent_secret: str | None,
    tls: bool,
    ca_file: Path | None,
) -> list[ManagementLink]:
    ssl_context = client_ssl_context(ca_file) if tls else None
    return [
        ManagementLink(
            agent_socket_base_url(address, tls) + agent_id,
            name=name,
            status=status,
            engines=engines,
            on_desired_state=on_desired_state,
            agent_secret=agent_secret,
            ssl_context=ssl_context,
        )
        for address in addresses
    ]


def agent_socket_base_url(management_addr: SocketAddress, tls: bool) -> str:
    """`ws://HOST:PORT/api/v1/agent_socket/` (`wss://` with TLS; the agent id follows)."""
    host = management_addr.host
    if ":" in host:
        host = f"[{host}]"
    scheme = "wss" if tls else "ws"
    return f"{scheme}://{host}:{management_addr.port}/api/v1/agent_socket/"


def describe_balancers(addresses: Sequence[SocketAddress]) -> str:
    """`the balancer at A` or `the balancers at A, B`, for the agent's first log line."""
    return f"the balancer{'s' if len(addresses) > 1 else ''} at {', '.join(str(address) for address in addresses)}"


async def start_links(nursery: trio.Nursery, links: Sequence[ManagementLink]) -> None:
    for link in links:
        await nursery.start(link.run)


async def leave_all(links: Sequence[ManagementLink]) -> None:
    """Deregister from every balancer at once (each bounded in time by `ManagementLink.leave`)."""
    async with trio.open_nursery() as goodbyes:
        for link in links:
            goodbyes.start_soon(link.leave)
