"""Which agents an OpenAI request goes to by its `model` (`ServedModels`), on pools of controllers."""

from __future__ import annotations

import pytest

from paddler_trio.protocol import AgentKind
from paddler_trio.proxy.agent_pool import AgentPool
from paddler_trio.proxy.agent_wants import ENGINE_AGENT, AgentWants
from paddler_trio.proxy.openai_errors import OpenAIError
from paddler_trio.proxy.openai_model_routing import ServedModels
from tests.proxy.pool_fixtures import agent, llama_server_agent


def pool_of(*agents) -> AgentPool:  # type: ignore[no-untyped-def]
    pool = AgentPool()
    for each in agents:
        pool.register(each)
    return pool


def test_a_fleet_of_our_agents_takes_any_name_as_paddler_does() -> None:
    served = ServedModels.of("gemma.gguf", pool_of(agent("a")))
    assert served.ids == ["gemma.gguf"]
    assert served.wants("gpt-4o") == served.wants(None) == served.wants("gemma.gguf") == ENGINE_AGENT


def test_a_mixed_fleet_sends_each_model_to_its_own_agents() -> None:
    served = ServedModels.of("gemma.gguf", pool_of(agent("a"), llama_server_agent("q", model_name="qwen")))
    assert served.ids == ["gemma.gguf", "qwen"]
    assert served.wants("gemma.gguf") == ENGINE_AGENT
    assert served.wants("qwen") == AgentWants(AgentKind.LLAMA_SERVER, "qwen")
    assert served.wants("qwen.gguf") == AgentWants(AgentKind.LLAMA_SERVER, "qwen.gguf")
    with pytest.raises(OpenAIError) as unknown:
        served.wants("gpt-4o")
    assert (unknown.value.status, unknown.value.code, unknown.value.param) == (404, "model_not_found", "model")
    assert "'gemma.gguf', 'qwen'" in unknown.value.message


def test_llama_server_agents_of_one_model_take_any_name_and_are_listed_once() -> None:
    served = ServedModels.of(None, pool_of(llama_server_agent("q1"), llama_server_agent("q2")))
    assert served.ids == ["qwen"]
    assert served.wants("whatever") == AgentWants(AgentKind.LLAMA_SERVER, "qwen")
