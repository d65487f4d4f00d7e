"""All connected agents, and the slot claims that dispatch requests to them.

Selection, `least-busy` (Paddler's rule; spec "Where we go beyond Paddler", item 1): among
agents that accept work of the request's kind (`agent_wants.py`) and have a free slot, the lowest share of busy slots wins; equals
are served in turn (a rotating cursor), never by dictionary order.

Selection, `cache-aware` (the default; docs/architecture.md, "Cache-aware routing"): among
those agents, the ones whose share of busy slots is at most `BUSY_SHARE_MARGIN` above the
lowest compete on how much of the request's prefix they are assumed to hold
(`prefix_affinity.py`); the longest wins, equals go to the least busy, then in turn. When none
holds any of it, Paddler's rule decides. A claim counts against the agent at once and is
released exactly once.

Everything here runs on the Trio thread and never awaits, so a claim is atomic: no two
requests can take the last slot of an agent.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import trio

from paddler_trio.proxy.agent_controller import AgentController
from paddler_trio.proxy.agent_wants import ENGINE_AGENT, AgentWants
from paddler_trio.proxy.prefix_chain import NO_PREFIX, PrefixChain
from paddler_trio.protocol import AgentControllerPoolSnapshot, AgentKind
from paddler_trio.routing_policy import RoutingPolicy

# How much busier (in share of busy slots) than the least busy agent an agent may be and still
# win a request by its cache. The request starts at once either way (it has a free slot): the
# cost of the busier agent is one more sequence in its batches, against prefilling the shared
# prefix again elsewhere. A quarter of the slots keeps that cost small and no agent a hot spot.
BUSY_SHARE_MARGIN = 0.25


class DuplicateAgent(Exception):
    """An agent id that is already registered."""


@attrs.define(eq=False)
class SlotClaim:
    """One dispatched request's hold on one slot of one agent."""

    agent: AgentController
    _pool: AgentPool
    prefix: PrefixChain = NO_PREFIX
    # The agent's status generation the claim was taken in (`AgentController.take_slot`).
    generation: int = 0
    _released: bool = False

    def forget_prefix(self) -> None:
        """The request did not finish normally: the agent dropped its KV, so its prefix too."""
        self.agent.prefixes.forget(self.prefix)

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self.agent.release_slot(self.generation)
        self._pool.notify_changed()


class AgentPool:
    def __init__(self, routing_policy: RoutingPolicy = RoutingPolicy.CACHE_AWARE) -> None:
        self.routing_policy = routing_policy
        self._agents: dict[str, AgentController] = {}
        self._cursor = 0
        self._listeners: list[Callable[[], None]] = []
        self._changed = trio.Event()
        self.version = 0
        self._generated_tokens_of_departed_agents = 0
        self._cached_prompt_tokens_of_departed_agents = 0
        self._prefilled_prompt_tokens_of_departed_agents = 0

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
        self._cached_prompt_tokens_of_departed_agents += agent.cached_prompt_tokens
        self._prefilled_prompt_tokens_of_departed_agents += agent.prefilled_prompt_tokens
        self.notify_changed()

    def get(self, agent_id: str) -> AgentController | None:
        return self._agents.get(agent_id)

    @property
    def agents(self) -> list[AgentController]:
        return list(self._agents.values())

    @property
    def engine_agents(self) -> list[AgentController]:
        """The agents that take requests over their link (not those watching a llama-server)."""
        return [agent for agent in self._agents.values() if agent.kind is AgentKind.ENGINE]

    @property
    def generated_tokens(self) -> int:
        """Tokens relayed to clients since the balancer started (a counter: departed agents still count)."""
        return self._generated_tokens_of_departed_agents + sum(agent.generated_tokens for agent in self._agents.values())

    @property
    def cached_prompt_tokens(self) -> int:
        """Prompt tokens the agents' caches spared, per their usage reports (a counter)."""
        return self._cached_prompt_tokens_of_departed_agents + sum(
            agent.cached_prompt_tokens for agent in self._agents.values()
        )

    @property
    def prefilled_prompt_tokens(self) -> int:
        """Prompt tokens the agents prefilled, per their usage reports (a counter)."""
        return self._prefilled_prompt_tokens_of_departed_agents + sum(
            agent.prefilled_prompt_tokens for agent in self._agents.values()
        )

    # --- dispatch ----------------------------------------------------------------------

    @property
    def routes_by_prefix(self) -> bool:
        return self.routing_policy is RoutingPolicy.CACHE_AWARE

    def try_claim(
        self, wants: AgentWants = ENGINE_AGENT, exclude: frozenset[str] = frozenset(), prefix: PrefixChain = NO_PREFIX
    ) -> SlotClaim | None:
        """Claim a slot for a request whose prompt has `prefix` on the agent the routing
        policy picks among those of `wants` that can take work now, or None."""
        candidates = self._free_agents(wants, exclude)
        if not candidates:
            return None
        lowest = min(agent.busy_share for agent in candidates)
        chosen = None
        if self.routes_by_prefix and prefix.links:
            chosen = self._holding_longest_prefix(candidates, prefix)
        if chosen is None:
            chosen = self._in_turn([agent for agent in candidates if agent.busy_share == lowest])
        generation = chosen.take_slot()
        if self.routes_by_prefix:
            chosen.prefixes.record(prefix, chosen.prefix_capacity)
        self.notify_changed()
        return SlotClaim(chosen, self, prefix, generation)

    def any_serving(self, wants: AgentWants, exclude: frozenset[str] = frozenset()) -> AgentController | None:
        """An agent of `wants` that accepts work, free slot or not (for requests that take no
        slot): the least busy, equals in turn."""
        candidates = [agent for agent in self._agents.values() if agent.id not in exclude and agent.serves(wants)]
        if not candidates:
            return None
        lowest = min(agent.busy_share for agent in candidates)
        return self._in_turn([agent for agent in candidates if agent.busy_share == lowest])

    def can_claim(self, wants: AgentWants) -> bool:
        return bool(self._free_agents(wants))

    def cached_characters(self, prefix: PrefixChain, wants: AgentWants = ENGINE_AGENT) -> int:
        """How much of `prefix` a claim now would find cached on the agent it lands on, in
        characters: 0 when no agent with a free slot (within the load margin) holds any of it,
        or when the policy ignores prefixes. The buffer serves such waiters first."""
        if not (self.routes_by_prefix and prefix.links):
            return 0
        candidates = self._free_agents(wants)
        if not candidates:
            return 0
        return max(self._matched_characters(candidates, prefix).values())

    def _free_agents(self, wants: AgentWants, exclude: frozenset[str] = frozenset()) -> list[AgentController]:
        return [
            agent
            for agent in self._agents.values()
            if agent.id not in exclude and agent.serves(wants) and agent.free_slots > 0
        ]

    @staticmethod
    def _matched_characters(candidates: list[AgentController], prefix: PrefixChain) -> dict[AgentController, int]:
        """How much of `prefix` each candidate within the load margin holds."""
        lowest = min(agent.busy_share for agent in candidates)
        return {
            agent: agent.prefixes.matched_characters(prefix)
            for agent in candidates
            if agent.busy_share <= lowest + BUSY_SHARE_MARGIN
        }

    def _holding_longest_prefix(self, candidates: list[AgentController], prefix: PrefixChain) -> AgentController | None:
        """The cache-aware choice, or None when no agent within the load margin holds any of `prefix`."""
        matched = self._matched_characters(candidates, prefix)
        longest = max(matched.values())
        if longest == 0:
            return None
        holders = [agent for agent, characters in matched.items() if characters == longest]
        least_busy = min(agent.busy_share for agent in holders)
        return self._in_turn([agent for agent in holders if agent.busy_share == least_busy])

    def _in_turn(self, tied: list[AgentController]) -> AgentController:
        chosen = tied[self._cursor % len(tied)]
        self._cursor += 1
        return chosen

    @property
    def slots_total(self) -> int:
        return sum(agent.slots_total for agent in self._agents.values())

    @property
    def slots_processing(self) -> int:
        """Slots this balancer's requests hold."""
        return sum(agent.slots_processing for agent in self._agents.values())

    @property
    def slots_busy(self) -> int:
        """Busy slots, as the agents list shows them: also the requests clients send a watched
        llama-server directly (`AgentController.slots_busy`)."""
        return sum(agent.slots_busy for agent in self._agents.values())

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
        """Whether an engine agent is registered, waiting up to `timeout` seconds for one to join."""
        with trio.move_on_after(timeout):
            seen_version = self.version
            while not self.engine_agents:
                seen_version = await self.wait_changed(seen_version)
        return bool(self.engine_agents)

    def snapshot(self) -> AgentControllerPoolSnapshot:
        return AgentControllerPoolSnapshot(agents=tuple(agent.snapshot() for agent in self._agents.values()))
