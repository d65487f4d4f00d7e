"""Clusters of real `paddler` processes shared by the tests of one module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.cluster import Cluster


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
