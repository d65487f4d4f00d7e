"""Faults between the balancer and real agents on the Gemma model (`--threads 1`): an agent
frozen with SIGSTOP, a link cut by a TCP proxy, a balancer restarted under load."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import pytest

from tests.faults.link_cutter import LinkCutter
from tests.integration.cluster import Cluster, free_port, ndjson_lines, wait_until

pytestmark = pytest.mark.slow

LONG = 300  # tokens: still streaming while the test acts
RAW = "/api/v1/continue_from_raw_prompt"


def body(prompt: str, max_tokens: int) -> dict:
    return {"raw_prompt": prompt, "max_tokens": max_tokens}


def short_request(cluster: Cluster, prompt: str = "1, 2, 3,") -> list[dict]:
    return ndjson_lines(httpx.post(f"{cluster.inference_url}{RAW}", json=body(prompt, 4), timeout=60))


def served_by(lines: list[dict]) -> str:
    assert "Done" in lines[-1]["Response"]["response"]["GeneratedToken"], lines[-1]
    return lines[-1]["Response"]["generated_by"]


def concurrent_short_requests(cluster: Cluster, count: int) -> list[list[dict]]:
    results: list[list[dict]] = [[] for _ in range(count)]

    def one(index: int) -> None:
        results[index] = short_request(cluster, f"Story {index}: once upon a time")

    threads = [threading.Thread(target=one, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    return results


def test_agent_frozen_mid_stream_gets_504_is_skipped_then_serves_again_after_sigcont(cluster_factory, gemma_model_path):
    cluster = cluster_factory("--inference-item-timeout", "1500", "--buffered-request-timeout", "30000")
    cluster.start_agent("one", slots=1)
    cluster.start_agent("two", slots=1)
    cluster.put_desired_state(gemma_model_path)
    cluster.wait_for_ready_agents(["one", "two"])

    with httpx.Client(timeout=60) as client, client.stream("POST", f"{cluster.inference_url}{RAW}", json=body("Once upon a time", LONG)) as response:
        lines = response.iter_lines()
        victim = json.loads(next(lines))["Response"]["generated_by"]
        healthy = ({"one", "two"} - {victim}).pop()
        cluster.agents[victim].signal(signal.SIGSTOP)
        frozen_at = time.monotonic()
        try:
            rest = [json.loads(line) for line in lines if line.strip()]
            timed_out_after = time.monotonic() - frozen_at
            assert rest[-1]["Error"]["error"]["code"] == 504
            assert rest[-1]["Error"]["error"]["description"].startswith("Inference timed out after 1500ms waiting for next token")
            assert 1.0 < timed_out_after < 5
            # The slot is released after the drain (at most another item timeout): never leaked.
            wait_until(lambda: cluster.slots_processing() == {"one": 0, "two": 0}, 10, "the frozen agent's slot to be released")

            # Still frozen: new work goes to the healthy agent only, one request after the other.
            for _ in range(3):
                assert served_by(short_request(cluster)) == healthy
            assert cluster.slots_processing()[victim] == 0
        finally:
            cluster.agents[victim].signal(signal.SIGCONT)

    # Its next status update (every second) marks it healthy again: a burst of two uses both.
    # That moment is not visible from outside the balancer, so bursts are sent until one does.
    def a_burst_uses_both() -> bool:
        return sorted(served_by(lines) for lines in concurrent_short_requests(cluster, 2)) == ["one", "two"]

    wait_until(a_burst_uses_both, 30, "a burst of two to use both agents again")
    cluster.wait_idle()
    assert {agent["name"]: agent["slots_total"] for agent in cluster.agents_snapshot()} == {"one": 1, "two": 1}


def test_the_only_agent_killed_before_its_first_token_gives_an_openai_502_not_a_buffer_timeout(cluster_factory, gemma_model_path):
    """Paddler's `openai_chat_completion_reports_an_agent_killed_mid_generation_as_a_bad_gateway`:
    the agent is frozen before the request reaches it, then killed; with no agent left to take
    the request again it ends with 502 once the rejoin grace is over, long before the buffer's
    timeout would have given a 504."""
    openai_port = free_port()
    cluster = cluster_factory("--buffered-request-timeout", "60000", "--compat-openai-addr", f"127.0.0.1:{openai_port}")
    cluster.start_agent("only", slots=1)
    cluster.put_desired_state(gemma_model_path)
    cluster.wait_for_ready_agents(["only"])
    cluster.agents["only"].signal(signal.SIGSTOP)

    outcome: list[httpx.Response] = []
    chat = {"model": "any", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8}
    client = threading.Thread(
        target=lambda: outcome.append(httpx.post(f"http://127.0.0.1:{openai_port}/v1/chat/completions", json=chat, timeout=60))
    )
    client.start()
    wait_until(lambda: cluster.slots_processing() == {"only": 1}, 10, "the request to reach the frozen agent")
    cluster.agents["only"].process.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    client.join(60)

    answered_after = time.monotonic() - killed_at
    response = outcome[0]
    assert response.status_code == 502, response.text
    assert response.json()["error"]["message"] == "Agent controller connection closed"
    assert 4 < answered_after < 15  # the 5 s rejoin grace, not the 60 s buffer timeout
    assert cluster.agents_snapshot() == []
    assert cluster.buffered_requests() == 0


def test_link_cut_mid_stream_gives_502_the_agent_reconnects_and_nothing_is_double_counted(cluster_factory, gemma_model_path):
    cluster = cluster_factory("--buffered-request-timeout", "30000")
    with LinkCutter(cluster.management_port) as link:
        cluster.start_agent("linked", slots=2, management_addr=link.address)
        cluster.put_desired_state(gemma_model_path)
        cluster.wait_for_ready_agents(["linked"])
        agent_id = cluster.agent_named("linked")["id"]

        with httpx.Client(timeout=60) as client, client.stream("POST", f"{cluster.inference_url}{RAW}", json=body("Once upon a time", LONG)) as response:
            lines = response.iter_lines()
            next(lines), next(lines)
            assert cluster.slots_processing() == {"linked": 1}
            assert link.cut() == 1
            rest = [json.loads(line) for line in lines if line.strip()]
        assert rest[-1]["Error"]["error"] == {"code": 502, "description": "Agent controller connection closed"}

        # The agent comes back over a new connection, with the same id and exact counts.
        wait_until(lambda: link.accepted >= 2, 10, "the agent to reconnect")
        wait_until(lambda: (cluster.agent_named("linked") or {}).get("slots_total") == 2, 10, "the agent to register again")
        snapshot = cluster.agents_snapshot()
        assert [(agent["id"], agent["slots_total"], agent["slots_processing"]) for agent in snapshot] == [(agent_id, 2, 0)]

        results = concurrent_short_requests(cluster, 2)
        assert [served_by(lines) for lines in results] == ["linked", "linked"]
        cluster.wait_idle()
        snapshot = cluster.agents_snapshot()
        assert [(agent["id"], agent["slots_total"], agent["slots_processing"]) for agent in snapshot] == [(agent_id, 2, 0)]


def test_balancer_restarted_under_load_clients_get_clear_errors_agents_reconnect_within_two_seconds_and_all_stop_on_sigterm(
    cluster_factory, gemma_model_path, tmp_path
):
    # Without a grace period the balancer ends its streams at once, as Paddler does.
    flags = (
        "--state-database", f"file://{tmp_path / 'state.json'}", "--buffered-request-timeout", "30000",
        "--shutdown-grace-period", "0",
    )  # fmt: skip
    cluster = cluster_factory(*flags)
    cluster.start_agent("r1", slots=1)
    cluster.start_agent("r2", slots=1)
    cluster.put_desired_state(gemma_model_path)
    cluster.wait_for_ready_agents(["r1", "r2"])
    url = f"{cluster.inference_url}{RAW}"

    # Two streams hold both slots, a third request waits in the buffer.
    clients = [httpx.Client(timeout=30) for _ in range(3)]
    streams = [client.stream("POST", url, json=body(f"Story {i}: once upon a time", LONG)) for i, client in enumerate(clients)]
    outcomes: list[list[dict]] = [[] for _ in streams]

    def read_all(index: int) -> None:
        with streams[index] as response:
            outcomes[index] = [json.loads(line) for line in response.iter_lines() if line.strip()]

    readers = [threading.Thread(target=read_all, args=(index,)) for index in range(3)]
    for reader in readers[:2]:
        reader.start()
    wait_until(lambda: sum(cluster.slots_processing().values()) == 2, 30, "both slots to be busy")
    readers[2].start()
    wait_until(lambda: cluster.buffered_requests() == 1, 10, "the third request to be buffered")

    stopped_at = time.monotonic()
    cluster.balancer.signal(signal.SIGTERM)
    for reader in readers:
        reader.join(10)
        assert not reader.is_alive(), "a client hung through the balancer's shutdown"
    assert cluster.balancer.process.wait(10) == 0
    assert time.monotonic() - stopped_at < 5
    for lines in outcomes:
        assert lines[-1]["Error"]["error"] == {"code": 503, "description": "balancer is shutting down"}
    for client in clients:
        client.close()

    # While it is down, a client is refused at once rather than left waiting.
    with pytest.raises(httpx.ConnectError):
        httpx.post(url, json=body("Hi", 4), timeout=5)

    cluster.start_balancer(*flags)
    back_at = time.monotonic()
    wait_until(
        lambda: sorted((agent["name"], agent["slots_total"]) for agent in cluster.agents_snapshot()) == [("r1", 1), ("r2", 1)],
        2,
        "both agents to reconnect",
    )
    reconnected_after = time.monotonic() - back_at
    assert reconnected_after < 2
    results = concurrent_short_requests(cluster, 2)
    assert sorted(served_by(lines) for lines in results) == ["r1", "r2"]
    cluster.wait_idle()

    # SIGTERM to every process while a stream is open: a clear envelope, all gone within 5 s.
    processes = [cluster.balancer, *cluster.agents.values()]
    with httpx.Client(timeout=30) as client, client.stream("POST", url, json=body("Once upon a time", LONG)) as response:
        lines = response.iter_lines()
        next(lines)
        stopped_at = time.monotonic()
        for process in processes:
            process.signal(signal.SIGTERM)
        rest = [json.loads(line) for line in lines if line.strip()]
    assert rest[-1]["Error"]["error"] in (
        {"code": 503, "description": "balancer is shutting down"},
        {"code": 502, "description": "Agent controller connection closed"},  # the agent left first
    )
    for process in processes:
        assert process.process.wait(5) == 0, process.name
    assert time.monotonic() - stopped_at < 5
