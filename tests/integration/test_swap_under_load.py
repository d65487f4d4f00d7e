"""The bar: no request is dropped or fails during model swaps under a steady load.

Two real agents serve a steady stream of short requests from several client threads while
the desired state switches the model twice (Gemma -> Qwen -> Gemma); each switch comes once
the load is flowing, and the next once requests are served again after it.
Every request must end with Done: the count sent equals the count completed.

Every agent reloads at once (as in Paddler), so for the length of a load the cluster has no
free slot and requests wait in the balancer's buffer: its timeout must cover a model load
(several seconds on a busy 2-core machine), hence `--buffered-request-timeout 60000`.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import attrs
import httpx
import pytest

from tests.integration.cluster import ndjson_lines, wait_until
from tests.integration.desired_states import (
    applied_with,
    describe,
    desired_state,
    is_done,
    put_state,
    wait_for_agent,
)

pytestmark = pytest.mark.slow

CLIENTS = 4
PROMPTS = ["The capital of France is", "1, 2, 3, 4,", "def fibonacci(n):", "Roses are red,"]


@attrs.define
class Load:
    sent: int = 0
    completed: int = 0
    failures: list[str] = attrs.field(factory=list)
    completed_at: list[float] = attrs.field(factory=list)
    lock: threading.Lock = attrs.field(factory=threading.Lock)
    stop: threading.Event = attrs.field(factory=threading.Event)

    def client(self, inference_url: str, index: int) -> None:
        with httpx.Client(timeout=120) as http:
            while not self.stop.is_set():
                with self.lock:
                    self.sent += 1
                body = {"raw_prompt": PROMPTS[index % len(PROMPTS)], "max_tokens": 4}
                try:
                    lines = ndjson_lines(http.post(f"{inference_url}/api/v1/continue_from_raw_prompt", json=body))
                except httpx.HTTPError as error:
                    lines, problem = [], repr(error)
                else:
                    problem = describe(lines)
                with self.lock:
                    if is_done(lines) and not any("Error" in line for line in lines):
                        self.completed += 1
                        self.completed_at.append(time.monotonic())
                    else:
                        self.failures.append(problem)


def served_after(load: Load, moment: float) -> int:
    with load.lock:
        return sum(at > moment for at in load.completed_at)


def test_no_request_is_dropped_while_the_model_is_switched_twice(
    cluster_factory, gemma_model_path: Path, qwen_model_path: Path
):
    cluster = cluster_factory("--buffered-request-timeout", "60000")
    for name in ("a1", "a2"):
        cluster.start_agent(name, slots=2)
    put_state(cluster, desired_state(gemma_model_path)).raise_for_status()
    cluster.wait_for_ready_agents(["a1", "a2"])

    load = Load()
    clients = [threading.Thread(target=load.client, args=(cluster.inference_url, index)) for index in range(CLIENTS)]
    for thread in clients:
        thread.start()
    switches: list[float] = []
    try:
        # A failure ends the waits early: the assertions below report it.
        wait_until(lambda: load.failures or load.completed >= CLIENTS, 60, "the load to flow before the first switch")
        for model in (qwen_model_path, gemma_model_path):
            switched_at = time.monotonic()
            switches.append(switched_at)
            put_state(cluster, desired_state(model)).raise_for_status()
            for name in ("a1", "a2"):
                wait_for_agent(cluster, name, applied_with(model), f"{name} to load {model.name}", timeout=90)
            wait_until(
                lambda: load.failures or served_after(load, switched_at) >= CLIENTS,
                60,
                f"requests to be served again on {model.name}",
            )
    finally:
        load.stop.set()
        for thread in clients:
            thread.join(150)

    assert load.failures == []
    assert load.sent == load.completed
    for switched_at in switches:  # served before and after each switch
        assert any(at < switched_at for at in load.completed_at)
        assert served_after(load, switched_at) >= CLIENTS
    cluster.wait_idle()
    print(f"swap under load: {load.sent} requests sent, {load.completed} completed, 2 model switches")
