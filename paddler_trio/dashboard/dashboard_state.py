"""What the terminal dashboard knows about the balancer, updated by its feeds and keys."""

from __future__ import annotations

import time
from collections import deque

import attrs

from paddler_trio.protocol import AgentControllerSnapshot

# Tokens per second are averaged over this many seconds of `/metrics` samples.
TOKEN_RATE_WINDOW = 5.0


@attrs.define
class AgentRow:
    snapshot: AgentControllerSnapshot
    last_update: float  # time.time() when the balancer last reported a change of this agent


@attrs.define
class DashboardState:
    management_addr: str
    max_buffered_requests: int | None
    agents: list[AgentRow] = attrs.field(factory=list)
    buffered_requests: int | None = None
    selected_agent_id: str | None = None
    # (agent id, model path) -> GGUF metadata, or an error text
    metadata: dict[tuple[str, str], dict[str, str] | str] = attrs.field(factory=dict)
    # Why a feed is down (one entry per feed), shown until it reconnects.
    connection_problems: dict[str, str] = attrs.field(factory=dict)
    has_connected: bool = False
    _token_samples: deque[tuple[float, int]] = attrs.field(factory=deque)

    def take_agents(self, snapshots: tuple[AgentControllerSnapshot, ...], now: float | None = None) -> None:
        now = time.time() if now is None else now
        previous = {row.snapshot.id: row for row in self.agents}
        rows = []
        for snapshot in sorted(snapshots, key=lambda agent: ((agent.name or "").lower(), agent.id)):
            known = previous.get(snapshot.id)
            changed = known is None or known.snapshot != snapshot
            rows.append(AgentRow(snapshot, now if changed else known.last_update))
        self.agents = rows
        if self.selected_agent_id not in {row.snapshot.id for row in rows}:
            self.selected_agent_id = rows[0].snapshot.id if rows else None

    @property
    def selected(self) -> AgentRow | None:
        return next((row for row in self.agents if row.snapshot.id == self.selected_agent_id), None)

    def move_selection(self, step: int) -> None:
        if not self.agents:
            return
        ids = [row.snapshot.id for row in self.agents]
        index = ids.index(self.selected_agent_id) if self.selected_agent_id in ids else 0
        self.selected_agent_id = ids[(index + step) % len(ids)]

    def take_token_count(self, total: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self._token_samples and total < self._token_samples[-1][1]:
            self._token_samples.clear()  # the balancer restarted: its counter began again
        self._token_samples.append((now, total))
        while len(self._token_samples) > 2 and now - self._token_samples[1][0] >= TOKEN_RATE_WINDOW:
            self._token_samples.popleft()

    @property
    def tokens_per_second(self) -> float | None:
        if len(self._token_samples) < 2:
            return None
        (start, first), (end, last) = self._token_samples[0], self._token_samples[-1]
        return (last - first) / (end - start) if end > start else None

    @property
    def slots_processing(self) -> int:
        return sum(row.snapshot.slots_processing for row in self.agents)

    @property
    def slots_total(self) -> int:
        return sum(row.snapshot.slots_total for row in self.agents)
