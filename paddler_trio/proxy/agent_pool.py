"""All connected agents, and the slot claims that dispatch requests to them.

Selection (spec "Where we go beyond Paddler", item 1): among agents that accept work
and have a free slot, the lowest share of busy slots wins; equals are served in turn
(a rotating cursor), never by dictionary order. A claim counts against the agent at
once and is released exactly once.

Everything here runs on the Trio thread and never awaits, so a claim is atomic: no two
requests can take the last slot of an agent.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import trio

from paddler_trio.proxy.agent_controller import AgentController
from paddler_trio.protocol import AgentControllerPoolSnapshot


class DuplicateAgent(Exception):
    """An agent id that is already registered."""


@attrs.define(eq=False)
class SlotClaim:
    """One dispatched request's hold on one slot of one agent."""

    agent: AgentController
    _pool: AgentPool
    _released: bool = False

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self.agent.slots_processing -= 1
        self._pool.notify_changed()


class AgentPool:
    def __init__(self) -> None:
        self._agents: dict[str, AgentController] = {}
        self._cursor = 0
        self._listeners: list[Callable[[], None]] = []
        self._changed = trio.Event()
        self.version = 0
        self._generated_tokens_of_departed_agents = 0

    # --- membership --------------------------------------------------------------------

    def register(self, agent: AgentController) -> None:
        if agent.id in self._agents:
            raise DuplicateAgent(agent.id)
        self._agents[agent.id] = agent
        self.notify_changed()

    def deregister(self, agent: AgentController) -> None:
        """Remove `agent` (idempotent). An agent that reconnected under the same id since is a
        different controller and stays."""
        if self._agents.get(agent.id) is not agent:
            return
        del self._agents[agent.id]
        agent.connection_closed.set()
        agent.close_all_routes()
        self._generated_tokens_of_departed_agents += agent.generated_tokens
        self.notify_changed()

    def get(self, agent_id: str) -> AgentController | None:
        return self._agents.get(agent_id)

    @property
    def agents(self) -> list[AgentController]:
        return list(self._agents.values())

    @property
    def generated_tokens(self) -> int:
        """Tokens relayed to clients since the balancer started (a counter: departed agents still count)."""
        return self._generated_tokens_of_departed_agents + sum(agent.generated_tokens for agent in self._agents.values())

    # --- dispatch ----------------------------------------------------------------------

    def try_claim(self, exclude: frozenset[str] = frozenset()) -> SlotClaim | None:
        """Claim a slot on the least busy agent that can take work now, or None."""
        candidates = [
            agent
            for agent in self._agents.values()
            if agent.id not in exclude and agent.accepts_work and agent.free_slots > 0
        ]
        if not candidates:
            return None
        lowest = min(agent.busy_share for agent in candidates)
        tied = [agent for agent in candidates if agent.busy_share == lowest]
        chosen = tied[self._cursor % len(tied)]
        self._cursor += 1
        chosen.slots_processing += 1
        self.notify_changed()
        return SlotClaim(chosen, self)

    @property
    def slots_total(self) -> int:
        return sum(agent.slots_total for agent in self._agents.values())

    @property
    def slots_processing(self) -> int:
        return sum(agent.slots_processing for agent in self._agents.values())

    # --- change notification -----------------------------------------------------------

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Called synchronously after every change (the buffer hands freed slots out here)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[], None]) -> None:
        self._listeners.remove(listener)

    def notify_changed(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = trio.Event()
        for listener in list(self._listeners):
            listener()

    async def wait_changed(self, seen_version: int) -> int:
        """Return once the pool's version moved past `seen_version` (for SSE streams)."""
        while self.version == seen_version:
            await self._changed.wait()
        return self.version

    async def wait_for_an_agent(self, timeout: float) -> bool:
        """Whether an agent is registered, waiting up to `timeout` seconds for one to join."""
        with trio.move_on_after(timeout):
            seen_version = self.version
            while not self._agents:
                seen_version = await self.wait_changed(seen_version)
        return bool(self._agents)

    def snapshot(self) -> AgentControllerPoolSnapshot:
        return AgentControllerPoolSnapshot(agents=tuple(agent.snapshot() for agent in self._agents.values()))
