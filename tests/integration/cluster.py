"""Real `paddler balancer` and `paddler agent` processes on free loopback ports, for tests.

Everything here is synchronous on purpose: tests drive the cluster with real clients
(paddler-client on asyncio, httpx, websockets), each in its own event loop.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import httpx

DETERMINISTIC_PARAMETERS: dict[str, Any] = {
    "n_batch": 512,
    "context_size": 2048,
    "embedding_batch_size": 256,
    "enable_embeddings": False,
    "image_resize_to_fit": 1024,
    "k_cache_dtype": "Q8_0",
    "v_cache_dtype": "Q8_0",
    "min_p": 0.0,
    "n_gpu_layers": 0,
    "penalty_frequency": 0.0,
    "penalty_last_n": -1,
    "penalty_presence": 0.0,
    "penalty_repeat": 1.0,
    "pooling_type": "Last",
    "temperature": 0.0,
    "top_k": 1,
    "top_p": 1.0,
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


@attrs.define
class PaddlerProcess:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> int:
        self.signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"{self.name} did not exit within {timeout} s of SIGTERM:\n{self.log()[-3000:]}")

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


@attrs.define
class Cluster:
    directory: Path
    inference_port: int = attrs.field(factory=free_port)
    management_port: int = attrs.field(factory=free_port)
    balancer: PaddlerProcess | None = None
    agents: dict[str, PaddlerProcess] = attrs.field(factory=dict)

    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.inference_port}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    @property
    def management_addr(self) -> str:
        return f"127.0.0.1:{self.management_port}"

    def _spawn(self, name: str, arguments: list[str], more_environment: Mapping[str, str] | None = None) -> PaddlerProcess:
        log_path = self.directory / f"{name}.log"
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(more_environment or {})}
        process = subprocess.Popen(
            [sys.executable, "-m", "paddler_trio", *arguments],
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
            env=environment,
        )
        return PaddlerProcess(name, process, log_path)

    def start_balancer(self, *flags: str) -> PaddlerProcess:
        self.balancer = self._spawn(
            "balancer",
            [
                "balancer",
                "--inference-addr",
                f"127.0.0.1:{self.inference_port}",
                "--management-addr",
                self.management_addr,
                *flags,
            ],
        )
        wait_until(lambda: self._healthy(self.management_url) and self._healthy(self.inference_url), 30, "the balancer")
        return self.balancer

    def _healthy(self, url: str) -> bool:
        assert self.balancer is not None
        if self.balancer.process.poll() is not None:
            raise AssertionError(f"the balancer exited:\n{self.balancer.log()[-3000:]}")
        try:
            return httpx.get(f"{url}/health", timeout=1).text == "OK"
        except httpx.HTTPError:
            return False

    def start_agent(
        self,
        name: str,
        slots: int,
        threads: int = 1,
        management_addr: str | None = None,
        flags: Sequence[str] = (),
        environment: Mapping[str, str] | None = None,
    ) -> PaddlerProcess:
        """An agent of this cluster; `management_addr` points it elsewhere (a proxy in front of the balancer),
        `flags` are more of `paddler agent`'s flags, `environment` more variables of its environment."""
        agent = self._spawn(
            f"agent-{name}",
            [
                "agent",
                "--management-addr",
                management_addr or self.management_addr,
                "--name",
                name,
                "--slots",
                str(slots),
                "--threads",
                str(threads),
                *flags,
            ],
            environment,
        )
        self.agents[name] = agent
        return agent

    def start_llama_server_agent(self, name: str, local_llamacpp_addr: str, *flags: str) -> PaddlerProcess:
        """An agent of this cluster that watches the llama-server at `local_llamacpp_addr`."""
        agent = self._spawn(
            f"agent-{name}",
            ["agent", "--management-addr", self.management_addr, "--name", name, "--local-llamacpp-addr", local_llamacpp_addr, *flags],
        )
        self.agents[name] = agent
        return agent

    def put_desired_state(self, model_path: Path | str | None, **parameters: Any) -> httpx.Response:
        state = {
            "chat_template_override": None,
            "inference_parameters": {**DETERMINISTIC_PARAMETERS, **parameters},
            "model": {"LocalToAgent": str(model_path)} if model_path is not None else "None",
            "multimodal_projection": "None",
            "use_chat_template_override": False,
        }
        response = httpx.put(f"{self.management_url}/api/v1/balancer_desired_state", json=state, timeout=5)
        response.raise_for_status()
        return response

    def agents_snapshot(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.management_url}/api/v1/agents", timeout=5).json()["agents"]

    def agent_named(self, name: str) -> dict[str, Any] | None:
        return next((agent for agent in self.agents_snapshot() if agent["name"] == name), None)

    def wait_for_ready_agents(self, names: list[str], timeout: float = 90) -> None:
        def ready() -> bool:
            for name, process in self.agents.items():
                if name in names and process.process.poll() is not None:
                    raise AssertionError(f"agent {name} exited:\n{process.log()[-3000:]}")
            by_name = {agent["name"]: agent for agent in self.agents_snapshot()}
            return all(
                name in by_name
                and by_name[name]["slots_total"] > 0
                and by_name[name]["state_application_status"] == "Applied"
                for name in names
            )

        wait_until(ready, timeout, f"agents {names} to load the model")

    def slots_processing(self) -> dict[str, int]:
        return {agent["name"]: agent["slots_processing"] for agent in self.agents_snapshot()}

    def buffered_requests(self) -> int:
        return httpx.get(f"{self.management_url}/api/v1/buffered_requests", timeout=5).json()["buffered_requests_current"]

    def wait_idle(self, timeout: float = 20) -> None:
        wait_until(
            lambda: not any(self.slots_processing().values()) and self.buffered_requests() == 0,
            timeout,
            "every slot and buffer place to be released",
        )

    def shutdown(self) -> None:
        for agent in self.agents.values():
            if agent.process.poll() is None:
                agent.stop()
        if self.balancer is not None and self.balancer.process.poll() is None:
            self.balancer.stop()


def ndjson_lines(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]
