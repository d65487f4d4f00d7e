"""Pushes the balancer's gauges to a StatsD server over UDP (`--statsd-addr`, spec 8.1).

Every `--statsd-reporting-interval` one datagram per gauge: `<prefix><gauge>:<value>|g`,
the prefix joined as is (no dot inserted: `paddler_slots_processing`).
"""

from __future__ import annotations

import logging
import socket

import trio

from paddler_trio.cli_values import SocketAddress
from paddler_trio.management.balancer_gauges import BalancerGauges
from paddler_trio.proxy.agent_pool import AgentPool
from paddler_trio.proxy.buffer import RequestBuffer

_logger = logging.getLogger(__name__)


async def report_to_statsd(
    address: SocketAddress,
    *,
    prefix: str,
    interval: float,
    pool: AgentPool,
    buffer: RequestBuffer,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    (family, _, _, _, target), *_ = await trio.socket.getaddrinfo(address.host, address.port, type=socket.SOCK_DGRAM)
    with trio.socket.socket(family, socket.SOCK_DGRAM) as udp:
        await udp.connect(target)
        _logger.info("reporting metrics to StatsD at %s every %.0f ms", address, interval * 1000)
        task_status.started()
        failing = False
        while True:
            gauges = BalancerGauges.read(pool, buffer)
            try:
                for name, value, _ in gauges.named(prefix):
                    await udp.send(f"{name}:{value}|g".encode())
                failing = False
            except OSError as error:
                if not failing:
                    _logger.warning("cannot send metrics to StatsD at %s: %s", address, error)
                failing = True
            await trio.sleep(interval)
