"""Which agents may serve a request: its kind of agent, and its model when it names one.

Requests of our inference port go to `engine` agents (they run llama.cpp themselves and take
requests over their link); those of the reverse proxy go to `llama_server` agents, whose
llama-server the balancer calls directly. The OpenAI service sends each request by its `model`
(`openai_model_routing.py`): to the engine agents, or to the llama-server agents that serve that
model (`model`). The buffer keeps each waiter's wants, so that a slot freed on one agent goes to
a request that can use it.
"""

from __future__ import annotations

import attrs

from paddler_trio.protocol import AgentKind


@attrs.frozen
class AgentWants:
    kind: AgentKind = AgentKind.ENGINE
    # Only agents that serve this model (`AgentController.model_names`); None: any model.
    model: str | None = None
    # Agents the request must not go to (one that just failed it).
    excluded_agents: frozenset[str] = frozenset()

    def without(self, agent_id: str) -> AgentWants:
        return attrs.evolve(self, excluded_agents=self.excluded_agents | {agent_id})


ENGINE_AGENT = AgentWants(AgentKind.ENGINE)
LLAMA_SERVER_AGENT = AgentWants(AgentKind.LLAMA_SERVER)
