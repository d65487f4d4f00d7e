"""The balancer's three Paddler gauges (spec 8.1), shared by `/metrics` and the StatsD reporter.

`slots_processing` counts each agent's busy slots as the agents list shows them (`slots_busy`):
for an agent that runs llama.cpp itself, the requests this balancer dispatched to it, as in
Paddler; for one that watches a llama-server, also the requests clients send that llama-server
directly. `slots_total` counts the slots of every agent, of both kinds.
"""

from __future__ import annotations

import attrs

from paddler_trio.proxy.agent_pool import AgentPool
from paddler_trio.proxy.buffer import RequestBuffer


@attrs.frozen
class BalancerGauges:
    slots_processing: int
    slots_total: int
    requests_buffered: int

    @classmethod
    def read(cls, pool: AgentPool, buffer: RequestBuffer) -> BalancerGauges:
        return cls(
            slots_processing=pool.slots_busy,
            slots_total=pool.slots_total,
            requests_buffered=buffer.current,
        )

    def named(self, prefix: str) -> list[tuple[str, int, str]]:
        """(metric name, value, help text) for each gauge, names as `<prefix><gauge>`, texts as Paddler's."""
        return [
            (f"{prefix}slots_processing", self.slots_processing, "Number of processing slots"),
            (f"{prefix}slots_total", self.slots_total, "Number of total slots"),
            (f"{prefix}requests_buffered", self.requests_buffered, "Number of buffered requests"),
        ]
