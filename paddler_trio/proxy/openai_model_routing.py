"""Which agents an OpenAI request goes to, by its `model`, when the fleet is mixed.

The engine agents (ours, Paddler's) all serve the cluster's model, whose id is its GGUF file name
(`openai_models.model_id`); each llama-server agent serves its llama-server's own model, called
by llama-server's name for it or by its GGUF file name (`AgentController.model_names`).

- A fleet that serves one model takes any `model` to it, as Paddler and llama-server do (their
  OpenAI clients send whatever name they were configured with).
- A fleet that serves several sends each request to the agents of its model: the engine agents
  for the cluster's model, else the llama-server agents that serve it (their llama-server gets
  the request as it came, `openai_passthrough.py`). An unknown model gets OpenAI's 404
  `model_not_found`, naming the models served.
"""

from __future__ import annotations

import attrs

from paddler_trio.protocol import AgentKind
from paddler_trio.proxy.agent_pool import AgentPool
from paddler_trio.proxy.agent_wants import ENGINE_AGENT, AgentWants
from paddler_trio.proxy.openai_errors import OpenAIError


@attrs.frozen
class ServedModels:
    # The cluster's model, when its desired state names one.
    engine_model: str | None
    # Each llama-server agent's names for its model (an agent that does not report one: none).
    llama_server_models: tuple[frozenset[str], ...]

    @classmethod
    def of(cls, engine_model: str | None, pool: AgentPool) -> ServedModels:
        return cls(engine_model, tuple(agent.model_names for agent in pool.agents if agent.kind is AgentKind.LLAMA_SERVER))

    @property
    def ids(self) -> list[str]:
        """One id per model served, as `/v1/models` lists them."""
        ids = [] if self.engine_model is None else [self.engine_model]
        for names in self.llama_server_models:
            if names and not names & set(ids):
                ids.append(min(names, key=_preference))
        return ids

    def knows(self, model: str) -> bool:
        return model == self.engine_model or any(model in names for names in self.llama_server_models)

    def wants(self, model: str | None) -> AgentWants:
        """The agents a request for `model` goes to (`OpenAIError` 404 for a model nobody serves)."""
        if not any(self.llama_server_models):
            return ENGINE_AGENT
        if model is not None and model == self.engine_model:
            return ENGINE_AGENT
        if model is not None and self.knows(model):
            return AgentWants(AgentKind.LLAMA_SERVER, model)
        ids = self.ids
        if len(ids) == 1:
            return ENGINE_AGENT if self.engine_model is not None else AgentWants(AgentKind.LLAMA_SERVER, ids[0])
        raise OpenAIError(
            404,
            f"The model '{model}' does not exist; this balancer serves {', '.join(repr(i) for i in ids)}",
            param="model",
            code="model_not_found",
        )


def _preference(name: str) -> tuple[bool, str]:
    """llama-server's own name first (an alias, not a `.gguf` file name), then alphabetical."""
    return (name.endswith(".gguf"), name)

