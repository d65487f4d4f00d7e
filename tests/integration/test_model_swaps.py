"""Operators change the model, its chat template and its parameters on a running cluster
(`PUT /api/v1/balancer_desired_state`); real balancer and agent processes reconcile."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.cluster import ndjson_lines
from tests.integration.desired_states import (
    DESIRED,
    applied_with,
    conversation,
    describe,
    desired_state,
    generated,
    is_done,
    loads_logged,
    put_state,
    text_of,
    wait_for_agent,
)

pytestmark = pytest.mark.slow

# Whatever the conversation, the model sees a counting sequence: its reply is predictable.
COUNTING = "1, 2, 3, 4, 5, 6, 7,"
COUNTING_BY_TENS = "10, 20, 30, 40, 50, 60,"


def test_the_desired_state_survives_a_balancer_restart(cluster_factory, gemma_model_path: Path, tmp_path: Path):
    database = tmp_path / "desired-state.json"
    cluster = cluster_factory("--state-database", f"file://{database}")
    cluster.start_agent("a1", slots=1)
    state = desired_state(gemma_model_path, override=COUNTING, context_size=1024, penalty_last_n=64)
    assert put_state(cluster, state).status_code == 204
    wait_for_agent(cluster, "a1", applied_with(gemma_model_path), "the model to load")
    assert text_of(conversation(cluster, "anything", 6)).startswith(" 8, 9")
    stored = database.read_bytes()

    invalid = desired_state(gemma_model_path, embedding_batch_size=0)
    response = put_state(cluster, invalid)
    assert response.status_code == 400
    assert "embedding_batch_size must be greater than zero" in response.text
    assert database.read_bytes() == stored

    assert cluster.balancer is not None and cluster.balancer.stop() == 0
    cluster.start_balancer("--state-database", f"file://{database}")
    assert httpx.get(f"{cluster.management_url}{DESIRED}", timeout=5).json() == state
    agent = wait_for_agent(cluster, "a1", applied_with(gemma_model_path), "the agent to come back", timeout=30)
    assert agent["uses_chat_template_override"] is True
    assert text_of(conversation(cluster, "anything", 6)).startswith(" 8, 9")
    assert loads_logged(cluster, "a1") == 1  # the same state after the reconnect: no reload
    assert database.read_bytes() == stored


def test_a_model_switch_lets_streaming_requests_finish_then_serves_the_new_model(
    cluster_factory, gemma_model_path: Path, qwen_model_path: Path
):
    cluster = cluster_factory()
    cluster.start_agent("a1", slots=2)
    put_state(cluster, desired_state(gemma_model_path))
    wait_for_agent(cluster, "a1", applied_with(gemma_model_path), "Gemma to load")

    streams: list[list[dict[str, Any]]] = [[], []]
    finished_at: list[float] = [0.0, 0.0]
    first_tokens = [threading.Event(), threading.Event()]

    def stream(index: int) -> None:
        body = {"raw_prompt": "Once upon a time, in a land far away,", "max_tokens": 120}
        with httpx.stream(
            "POST", f"{cluster.inference_url}/api/v1/continue_from_raw_prompt", json=body, timeout=120
        ) as response:
            for line in response.iter_lines():
                if line.strip():
                    streams[index].extend(ndjson_lines_of(line))
                    first_tokens[index].set()
        finished_at[index] = time.monotonic()

    threads = [threading.Thread(target=stream, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for event in first_tokens:
        assert event.wait(60)
    switched_at = time.monotonic()
    put_state(cluster, desired_state(qwen_model_path)).raise_for_status()
    for thread in threads:
        thread.join(120)
    for lines in streams:
        assert is_done(lines), describe(lines)
        assert not any("Error" in line for line in lines)
    assert min(finished_at) > switched_at, "both requests were still streaming when the model changed"

    wait_for_agent(cluster, "a1", applied_with(qwen_model_path), "Qwen to load", timeout=90)
    # Gemma has no chat template: only the new model can answer a conversation.
    lines = conversation(cluster, "Reply with the single word: yes", 8)
    assert is_done(lines), describe(lines)
    assert generated(lines[-1])["Done"]["usage"]["content_tokens"] >= 1
    assert lines[0]["Response"]["generated_by"] == "a1"


def ndjson_lines_of(line: str) -> list[dict[str, Any]]:
    return ndjson_lines(httpx.Response(200, text=line))


def test_a_template_override_changes_the_prompt_the_model_sees(cluster_factory, gemma_model_path: Path):
    cluster = cluster_factory()
    cluster.start_agent("a1", slots=1)
    put_state(cluster, desired_state(gemma_model_path, override=COUNTING))
    wait_for_agent(cluster, "a1", lambda a: a["uses_chat_template_override"] and a["slots_total"] == 1, "override")
    assert text_of(conversation(cluster, "Tell me about the weather", 6)).startswith(" 8, 9,")

    put_state(cluster, desired_state(gemma_model_path, override=COUNTING_BY_TENS))
    wait_for_agent(cluster, "a1", applied_with(gemma_model_path), "the reload")
    assert text_of(conversation(cluster, "Tell me about the weather", 8)).startswith(" 70, 8")
    template = httpx.get(
        f"{cluster.management_url}/api/v1/agent/{cluster.agent_named('a1')['id']}/chat_template_override", timeout=5
    ).json()
    assert template == {"content": COUNTING_BY_TENS}

    # The override is kept in the desired state but switched off: Gemma's own (missing) template again.
    put_state(cluster, desired_state(gemma_model_path, override=COUNTING_BY_TENS, use_override=False))
    agent = wait_for_agent(
        cluster, "a1", lambda a: a["issues"] and a["slots_total"] == 1, "the missing template to be reported"
    )
    assert agent["issues"] == [{"UnableToFindChatTemplate": {"model_path": str(gemma_model_path)}}]
    assert agent["uses_chat_template_override"] is False
    assert loads_logged(cluster, "a1") == 3
