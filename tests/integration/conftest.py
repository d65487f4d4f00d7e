"""Clusters of real `paddler` processes shared by the tests of one module."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.cluster import Cluster, free_port
from tests.llama_server import LlamaServerProcess, required_llama_server, start_llama_server


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
