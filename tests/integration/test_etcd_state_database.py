"""Several balancers share one desired state in a real etcd (`--state-database etcd://`): a PUT on
one is served by the others and applied by their agents, concurrent PUTs end on one of the states
sent, and an etcd restart leaves them serving, then following again. Each balancer has its own
agent (an agent linked to several balancers is another feature)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.etcd_server import EtcdServer
from tests.integration.cluster import Cluster, free_port, wait_until
from tests.integration.desired_states import (
    DESIRED,
    applied_with,
    desired_state,
    is_done,
    put_state,
    raw_prompt,
    wait_for_agent,
)

pytestmark = pytest.mark.slow

# The promise: a PUT on one balancer is served by every other balancer on the same etcd within a second.
PROPAGATION_LIMIT = 1.0
KEY = "/paddler-tests/balancer_desired_state"
_REACHABLE = re.compile(r"^paddler_state_database_reachable (\d)$", re.MULTILINE)


def sharing(etcd: EtcdServer) -> tuple[str, str]:
    return ("--state-database", f"etcd://{etcd.address}/paddler-tests")


def served_state(cluster: Cluster) -> Any:
    return httpx.get(f"{cluster.management_url}{DESIRED}", timeout=5).json()


def applicable_state(cluster: Cluster) -> Any:
    return httpx.get(f"{cluster.management_url}/api/v1/balancer_applicable_state", timeout=5).json()


def state_database_reachable(cluster: Cluster) -> bool:
    match = _REACHABLE.search(httpx.get(f"{cluster.management_url}/metrics", timeout=5).text)
    assert match is not None, "/metrics shows no paddler_state_database_reachable"
    return match.group(1) == "1"


def balancer_log(cluster: Cluster) -> str:
    assert cluster.balancer is not None
    return cluster.balancer.log()


def test_a_put_on_one_balancer_is_served_by_the_other_within_a_second_and_applied_by_its_agent(
    cluster_factory, etcd_server: EtcdServer, gemma_model_path: Path
):
    first, second = cluster_factory(*sharing(etcd_server)), cluster_factory(*sharing(etcd_server))
    first.start_agent("a1", slots=1)
    second.start_agent("b1", slots=1)
    state = desired_state(gemma_model_path, context_size=1024)
    assert put_state(first, state).status_code == 204
    wait_until(lambda: served_state(second) == state, PROPAGATION_LIMIT, "balancer B to serve the state PUT on A")
    wait_for_agent(second, "b1", applied_with(gemma_model_path), "B's agent to load the model")
    wait_for_agent(first, "a1", applied_with(gemma_model_path), "A's agent to load the model")
    assert is_done(raw_prompt(second, "Once upon a time", 4))

    changed = desired_state(gemma_model_path, context_size=2048)  # and back, from B to A
    assert put_state(second, changed).status_code == 204
    wait_until(lambda: served_state(first) == changed, PROPAGATION_LIMIT, "balancer A to serve the state PUT on B")
    wait_until(
        lambda: applicable_state(first)["inference_parameters"]["context_size"] == 2048, 5, "A to send its agent the change"
    )
    wait_for_agent(first, "a1", applied_with(gemma_model_path), "A's agent to apply the change")
    assert is_done(raw_prompt(first, "Once upon a time", 4))


def test_concurrent_puts_on_both_balancers_end_on_one_of_the_states_sent(cluster_factory, etcd_server: EtcdServer):
    first, second = cluster_factory(*sharing(etcd_server)), cluster_factory(*sharing(etcd_server))
    for round_number in range(6):
        # Two states that differ in many fields: a mix of them would show.
        sent = [
            desired_state(None, context_size=1024 + round_number, top_k=10 + round_number, temperature=0.1),
            desired_state(None, context_size=4096 + round_number, top_k=90 + round_number, temperature=0.9, n_batch=256),
        ]
        start = threading.Barrier(2)
        statuses: list[int] = []

        def put(cluster: Cluster, state: dict[str, Any]) -> None:
            start.wait()
            statuses.append(put_state(cluster, state).status_code)

        threads = [threading.Thread(target=put, args=pair) for pair in zip((first, second), sent)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert statuses == [204, 204]
        stored = etcd_server.get(KEY)
        assert stored is not None
        final = json.loads(stored)["balancer_desired_state"]
        assert final in sent  # whole: one of the two states, never a mix
        wait_until(lambda: served_state(first) == served_state(second) == final, PROPAGATION_LIMIT, "both balancers to serve it")


def test_an_etcd_restart_leaves_the_balancers_serving_then_following_again(
    cluster_factory, etcd_server: EtcdServer, gemma_model_path: Path
):
    first, second = cluster_factory(*sharing(etcd_server)), cluster_factory(*sharing(etcd_server))
    first.start_agent("a1", slots=1)
    second.start_agent("b1", slots=1)
    state = desired_state(gemma_model_path, context_size=1024)
    assert put_state(first, state).status_code == 204
    for cluster, name in ((first, "a1"), (second, "b1")):
        wait_for_agent(cluster, name, applied_with(gemma_model_path), f"agent {name} to load the model")
    assert state_database_reachable(first) and state_database_reachable(second)

    etcd_server.kill()
    wait_until(
        lambda: not state_database_reachable(first) and not state_database_reachable(second), 10, "the balancers to notice"
    )
    for cluster in (first, second):
        assert "state database unreachable" in balancer_log(cluster)
        assert served_state(cluster) == state
        assert is_done(raw_prompt(cluster, "Once upon a time", 4))
    refused = put_state(first, desired_state(gemma_model_path, context_size=2048))
    assert refused.status_code == 503
    assert "Cannot store the desired state" in refused.text and "etcd" in refused.text

    etcd_server.start()  # same data directory and port
    wait_until(lambda: state_database_reachable(first) and state_database_reachable(second), 20, "the balancers to reconnect")
    assert "state database reachable again" in balancer_log(first)
    assert served_state(second) == state
    changed = desired_state(gemma_model_path, context_size=2048)
    assert put_state(first, changed).status_code == 204
    wait_until(lambda: served_state(second) == changed, PROPAGATION_LIMIT, "balancer B to serve the PUT made after the restart")
    wait_until(
        lambda: applicable_state(second)["inference_parameters"]["context_size"] == 2048, 5, "B to send its agent the change"
    )
    wait_for_agent(second, "b1", applied_with(gemma_model_path), "B's agent to apply the change")
    assert is_done(raw_prompt(second, "Once upon a time", 4))


def test_a_balancer_waits_for_etcd_at_start_up_and_a_stop_signal_ends_the_wait(tmp_path: Path, etcd_server: EtcdServer):
    etcd_server.kill()
    for attempt, etcd_comes_back in enumerate((False, True)):
        log_path = tmp_path / f"balancer-{attempt}.log"
        management = f"127.0.0.1:{free_port()}"
        process = subprocess.Popen(
            [
                sys.executable, "-m", "paddler_trio", "balancer",
                "--inference-addr", f"127.0.0.1:{free_port()}", "--management-addr", management,
                *sharing(etcd_server),
            ],  # fmt: skip
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(
                lambda: log_path.read_text().count("waiting for the state database before serving") >= 2,
                20,
                "the balancer to log its tries",
            )
            assert etcd_server.address in log_path.read_text()
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"http://{management}/health", timeout=1)  # nothing serves before the state is read
            if etcd_comes_back:
                etcd_server.start()
                wait_until(lambda: _answers(f"http://{management}/health"), 20, "the balancer to serve")
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0, log_path.read_text()[-3000:]
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).text == "OK"
    except httpx.HTTPError:
        return False
