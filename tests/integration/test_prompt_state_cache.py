"""The agents' prompt state cache seen from outside: a real `paddler balancer` (with its
OpenAI-compatible service) and a real `paddler agent` with one slot on Gemma 3 270M (greedy)."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.cluster import Cluster, free_port, ndjson_lines, wait_until

pytestmark = pytest.mark.slow

MIB = 2**20


def counting(start: int, count: int) -> str:
    return ", ".join(str(number) for number in range(start, start + count)) + ","


def native_usage(cluster: Cluster, prompt: str) -> dict:
    response = httpx.post(
        f"{cluster.inference_url}/api/v1/continue_from_raw_prompt",
        json={"raw_prompt": prompt, "max_tokens": 6},
        timeout=60,
    )
    return ndjson_lines(response)[-1]["Response"]["response"]["GeneratedToken"]["Done"]["usage"]


def test_a_conversation_that_lost_its_slot_comes_back_from_the_cache_and_agents_show_the_cache(
    cluster_factory, gemma_model_path
):
    openai_port = free_port()
    cluster = cluster_factory("--compat-openai-addr", f"127.0.0.1:{openai_port}")
    cluster.start_agent("cached", slots=1, flags=("--cache-ram-mib", "64"))
    cluster.put_desired_state(gemma_model_path)
    cluster.wait_for_ready_agents(["cached"])
    agent = cluster.agent_named("cached")
    assert agent is not None
    assert (agent["cache_states"], agent["cache_used_bytes"], agent["cache_limit_bytes"]) == (0, 0, 64 * MIB)

    assert native_usage(cluster, counting(100, 30))["cached_prompt_tokens"] == 0
    native_usage(cluster, counting(5000, 30))  # takes the only slot: the first conversation is saved
    continued = native_usage(cluster, counting(100, 40))
    assert continued["cached_prompt_tokens"] > 100  # restored, not prefilled

    # The OpenAI API counts restored tokens as cached too.
    native_usage(cluster, counting(7000, 30))
    completion = httpx.post(
        f"http://127.0.0.1:{openai_port}/v1/completions",
        json={"model": "any", "prompt": counting(5000, 40), "max_tokens": 6},
        timeout=60,
    ).json()
    assert completion["usage"]["prompt_tokens_details"]["cached_tokens"] > 100

    def cache_reported() -> dict | None:
        agent = cluster.agent_named("cached")
        return agent if agent is not None and agent["cache_states"] >= 3 else None

    agent = wait_until(cache_reported, 10, "the agent to report the states it holds")
    assert 0 < agent["cache_used_bytes"] <= agent["cache_limit_bytes"] == 64 * MIB
