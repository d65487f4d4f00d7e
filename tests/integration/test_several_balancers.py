"""Agents that serve several balancers at once (`paddler agent --management-addr A --management-addr B`):
real balancers, real agents on the Gemma model, clients on both balancers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import attrs
import httpx
import pytest
import trio

from tests.etcd_server import EtcdServer
from tests.integration.cluster import Cluster, ndjson_lines, wait_until
from tests.integration.desired_states import applied_with, desired_state, is_done, put_state, raw_prompt, wait_for_agent

pytestmark = pytest.mark.slow

MAX_TOKENS = 8


def prompt_body(index: int) -> dict:
    return {"raw_prompt": f"Count from {index}: {index}, {index + 1},", "max_tokens": MAX_TOKENS}


def completed_normally(lines: list[dict]) -> bool:
    return bool(lines) and "Done" in lines[-1].get("Response", {}).get("response", {}).get("GeneratedToken", {})


def shared_agents(cluster_factory, model_path: Path, names: list[str], slots: int) -> tuple[Cluster, Cluster]:
    """Two balancers with the same desired state, and agents registered with both."""
    first, second = cluster_factory(), cluster_factory()
    # Each balancer hands its desired state to the agent when it registers: they must agree.
    first.put_desired_state(model_path)
    second.put_desired_state(model_path)
    for name in names:
        first.start_agent(name, slots=slots, flags=("--management-addr", second.management_addr))
    first.wait_for_ready_agents(names)

    def second_sees_them() -> bool:
        ready = {agent["name"] for agent in second.agents_snapshot() if agent["slots_total"] == slots}
        return ready == set(names)

    wait_until(second_sees_them, 30, "the second balancer to see every agent with all its slots")
    return first, second


def slots_seen(cluster: Cluster) -> list[tuple[str, int, int]]:
    return sorted((agent["name"], agent["slots_total"], agent["slots_processing"]) for agent in cluster.agents_snapshot())


def test_both_balancers_race_for_the_same_slots_and_every_request_completes(cluster_factory, gemma_model_path):
    """One agent of 2 slots, 8 requests at once on each balancer: each balancer believes the agent's
    slots free until the agent's next status update, so they race for them. The agent refuses
    what it has no slot for and the balancer dispatches it again: every client gets its tokens."""
    first, second = shared_agents(cluster_factory, gemma_model_path, ["shared"], slots=2)
    outcomes: list[tuple[str, list[dict]]] = []

    async def ask(client: httpx.AsyncClient, cluster: Cluster, index: int) -> None:
        response = await client.post(f"{cluster.inference_url}/api/v1/continue_from_raw_prompt", json=prompt_body(index))
        outcomes.append((cluster.inference_url, ndjson_lines(response)))

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=120) as client, trio.open_nursery() as nursery:
            for index in range(8):
                nursery.start_soon(ask, client, first, index)
                nursery.start_soon(ask, client, second, 100 + index)

    trio.run(scenario)
    failures = [(url, lines[-1:]) for url, lines in outcomes if not completed_normally(lines)]
    assert not failures, failures
    assert len(outcomes) == 16
    log = first.agents["shared"].log()
    assert "came when every slot was taken" in log, "the balancers never raced for a slot: the test proved nothing"
    # Every slot is free again on both sides: no claim leaked on either balancer.
    for cluster in (first, second):
        wait_until(lambda cluster=cluster: slots_seen(cluster) == [("shared", 2, 0)], 10, "every slot to be free again")


@attrs.define
class _Load:
    started: float = attrs.field(factory=time.monotonic)
    killed_at: float | None = None
    sent: dict[str, int] = attrs.field(factory=lambda: {"first": 0, "second": 0, "retries on second": 0})
    completed: dict[str, int] = attrs.field(factory=lambda: {"first": 0, "second": 0, "retries on second": 0})
    failed: dict[str, int] = attrs.field(factory=dict)
    first_retry_served_after: float | None = None

    def fail(self, cause: str) -> None:
        self.failed[cause] = self.failed.get(cause, 0) + 1


def test_a_balancer_killed_under_load_loses_only_its_own_requests(cluster_factory, gemma_model_path, tmp_path):
    """Steady load split over two balancers in front of the same two agents; balancer A gets
    SIGKILL. Every request sent to B completes; A's clients see connection errors, and their
    retries on B complete; the agents' slots are all free again on B afterwards."""
    first, second = shared_agents(cluster_factory, gemma_model_path, ["g1", "g2"], slots=2)
    load = _Load()
    kill_after, run_for = 3.0, 9.0

    async def client_loop(client: httpx.AsyncClient, home: str, index: int) -> None:
        target = first if home == "first" else second
        request = 0
        while time.monotonic() - load.started < run_for:
            request += 1
            body = prompt_body(index * 1000 + request)
            if target is first and load.killed_at is not None:
                target = second  # A is gone: this client moves to B for good
            label = "retries on second" if home == "first" and target is second else home
            load.sent[label] += 1
            try:
                response = await client.post(f"{target.inference_url}/api/v1/continue_from_raw_prompt", json=body)
                lines = ndjson_lines(response)
            except (httpx.TransportError, json.JSONDecodeError) as error:
                load.fail(f"{label}: {type(error).__name__}")
                target = second  # its retry (and everything after) goes to B
                continue
            if completed_normally(lines):
                load.completed[label] += 1
                if label == "retries on second" and load.first_retry_served_after is None and load.killed_at is not None:
                    load.first_retry_served_after = time.monotonic() - load.killed_at
            else:
                load.fail(f"{label}: {json.dumps(lines[-1:])[:200]}")

    async def killer() -> None:
        await trio.sleep(kill_after)  # the scenario's script: A serves load a while, then dies
        assert first.balancer is not None
        first.balancer.kill()
        load.killed_at = time.monotonic()

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=60) as client, trio.open_nursery() as nursery:
            for index in range(3):
                nursery.start_soon(client_loop, client, "first", index)
                nursery.start_soon(client_loop, client, "second", 10 + index)
            nursery.start_soon(killer)

    trio.run(scenario)
    figures = attrs.asdict(load)
    (tmp_path / "failover-figures.json").write_text(json.dumps(figures, indent=2))
    print("failover figures:", json.dumps(figures))
    failed_on_second = {cause: count for cause, count in load.failed.items() if not cause.startswith("first")}
    assert not failed_on_second, figures
    assert load.completed["second"] == load.sent["second"] > 0, figures
    assert load.completed["retries on second"] == load.sent["retries on second"] > 0, figures
    assert load.completed["first"] > 0, figures
    # A's requests in flight were lost with it; the agents cancelled them and every slot is B's again.
    wait_until(lambda: slots_seen(second) == [("g1", 2, 0), ("g2", 2, 0)], 15, "every slot to be free again on B")


def test_balancers_sharing_etcd_hand_a_put_to_agents_registered_with_both(cluster_factory, etcd_server: EtcdServer, gemma_model_path):
    """The deployment of docs/deployment.md: two balancers on one etcd, two agents serving both.
    A state PUT on A is served by B, both agents apply it, and both balancers generate with them."""
    sharing = ("--state-database", f"etcd://{etcd_server.address}/paddler-several")
    first, second = cluster_factory(*sharing), cluster_factory(*sharing)
    for name in ("g1", "g2"):
        first.start_agent(name, slots=1, flags=("--management-addr", second.management_addr))
    state = desired_state(gemma_model_path, context_size=1024)
    assert put_state(first, state).status_code == 204
    for cluster in (first, second):
        for name in ("g1", "g2"):
            wait_for_agent(cluster, name, applied_with(gemma_model_path), f"{name} to apply the state PUT on A")
    assert is_done(raw_prompt(first, "Once upon a time", 4))
    assert is_done(raw_prompt(second, "Once upon a time", 4))
