"""Clusters of real `paddler` processes shared by the tests of one module."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.cluster import Cluster, free_port
from tests.llama_server import LlamaServerProcess, required_llama_server, start_llama_server


LOG_TAIL_CHARACTERS = 6000


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    """A failed test's report ends with the tail of every log its processes wrote (balancer,
    agents, llama-servers), so that a failure on CI says what the processes saw."""
    report: pytest.TestReport = yield
    tmp_path = getattr(item, "funcargs", {}).get("tmp_path")
    if report.failed and report.when == "call" and isinstance(tmp_path, Path):
        for log in sorted(tmp_path.rglob("*.log")):
            tail = log.read_text(errors="replace")[-LOG_TAIL_CHARACTERS:]
            report.sections.append((f"log {log.relative_to(tmp_path)} (last {LOG_TAIL_CHARACTERS} characters)", tail))
    return report


@pytest.fixture
def cluster_factory(tmp_path) -> Iterator:
    """Start clusters on demand; every process is stopped (and its log shown) at the end."""
    clusters: list[Cluster] = []

    def start(*balancer_flags: str) -> Cluster:
        cluster = Cluster(tmp_path / f"cluster-{len(clusters)}")
        cluster.directory.mkdir()
        clusters.append(cluster)
        cluster.start_balancer(*balancer_flags)
        return cluster

    yield start
    for cluster in clusters:
        cluster.shutdown()


@pytest.fixture(scope="module")
def llama_server_binary() -> Path:
    return required_llama_server()


@pytest.fixture
def llama_servers(llama_server_binary: Path, qwen_model_path: Path, tmp_path: Path) -> Iterator[Callable[..., LlamaServerProcess]]:
    """Start llama-servers on demand (on a given port, or a free one); all are stopped at the end."""
    started: list[LlamaServerProcess] = []

    def start(*flags: str, port: int | None = None) -> LlamaServerProcess:
        port = port or free_port()
        server = start_llama_server(llama_server_binary, qwen_model_path, port, tmp_path / f"llama-server-{port}.log", *flags)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
