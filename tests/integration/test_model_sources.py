"""Model sources on real agent processes: a URL download that resumes after a dropped
transfer, Hugging Face through a local mirror (`HF_ENDPOINT`), and every kind of failure
reported as its AgentIssue (in `/api/v1/agents` and its SSE stream) then cleared by a fix.
All files come from a local server; never the internet."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.cluster import Cluster, free_port
from tests.integration.desired_states import (
    applied_with,
    desired_state,
    is_done,
    put_state,
    raw_prompt,
    wait_for_agent,
)
from tests.model_file_server import ModelFileServer

pytestmark = pytest.mark.slow

HF_RESOLVE = "/test-org/gemma-GGUF/resolve/main/gemma.gguf"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as content:
        for block in iter(lambda: content.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@pytest.fixture
def model_server(gemma_model_path: Path, tmp_path: Path) -> Iterator[ModelFileServer]:
    corrupt = tmp_path / "corrupt.gguf"
    with gemma_model_path.open("rb") as model:
        corrupt.write_bytes(model.read(2**20))  # a real GGUF header, cut short
    files = {"/gemma.gguf": gemma_model_path, HF_RESOLVE: gemma_model_path, "/corrupt.gguf": corrupt}
    server = ModelFileServer(files=files)
    with server.running():
        yield server


@pytest.fixture
def agent_environment(model_server: ModelFileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Agent processes inherit these: a fresh download cache and Hugging Face home, the local mirror."""
    cache = tmp_path / "paddler-cache"
    monkeypatch.setenv("PADDLER_CACHE_DIR", str(cache))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", model_server.endpoint)
    return cache


class SnapshotRecorder:
    """Every snapshot the management SSE stream sends, recorded in a thread."""

    def __init__(self, cluster: Cluster) -> None:
        self.snapshots: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._read, args=(cluster.management_url,), daemon=True)
        self._thread.start()

    def _read(self, url: str) -> None:
        try:
            with httpx.stream("GET", f"{url}/api/v1/agents/stream", timeout=None) as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        self.snapshots.append(json.loads(line.removeprefix("data: ")))
        except httpx.HTTPError:
            pass  # the balancer stopped

    def issues_seen(self) -> list[dict[str, Any]]:
        return [issue for snapshot in self.snapshots for agent in snapshot["agents"] for issue in agent["issues"]]


def test_a_url_download_interrupted_halfway_resumes_with_range(
    cluster_factory, model_server: ModelFileServer, agent_environment: Path, gemma_model_path: Path
):
    size = gemma_model_path.stat().st_size
    model_server.drop_after["/gemma.gguf"] = size // 2
    url = model_server.url("/gemma.gguf")
    cluster = cluster_factory()
    cluster.start_agent("a1", slots=1)
    put_state(cluster, desired_state({"Url": {"url": url}})).raise_for_status()
    wait_for_agent(
        cluster, "a1", lambda a: {"DownloadInterrupted": {"model_path": url}} in a["issues"], "the interruption"
    )
    cached = agent_environment / "downloaded-models" / hashlib.sha256(url.encode()).hexdigest()
    agent = wait_for_agent(cluster, "a1", applied_with(cached), "the resumed download to load", timeout=120)
    assert agent["issues"] == [{"UnableToFindChatTemplate": {"model_path": str(cached)}}]  # Gemma is a base model
    first, second = model_server.requests_for("/gemma.gguf")
    assert "Range" not in first.headers
    resumed_at = int(second.headers["Range"].removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_at <= size // 2
    assert sha256(cached) == sha256(gemma_model_path)
    assert not cached.with_suffix(".partial").exists()
    assert is_done(raw_prompt(cluster, "The capital of France is", 3))


def test_every_failure_is_reported_as_its_issue_and_cleared_by_a_fix(
    cluster_factory, model_server: ModelFileServer, agent_environment: Path, gemma_model_path: Path, tmp_path: Path
):
    cluster = cluster_factory()
    recorder = SnapshotRecorder(cluster)
    cluster.start_agent("a1", slots=1)
    unreachable = f"http://127.0.0.1:{free_port()}/model.gguf"
    model_server.statuses.update({"/denied.gguf": 403, "/broken.gguf": 500, "/teapot.gguf": 418})
    model_server.statuses["/test-org/private-GGUF/resolve/main/model.gguf"] = 401
    missing_file = str(tmp_path / "missing.gguf")
    def url(path: str) -> dict[str, Any]:
        return {"Url": {"url": model_server.url(path)}}

    def hugging_face(repo_id: str) -> dict[str, Any]:
        return {"HuggingFace": {"repo_id": repo_id, "filename": "model.gguf", "revision": "main"}}

    # (model source, issue kind, the issue's model_path; None where it is the agent's cache path)
    cases: list[tuple[Any, str, str | None]] = [
        (missing_file, "ModelFileDoesNotExist", missing_file),
        (url("/corrupt.gguf"), "ModelCannotBeLoaded", None),
        (url("/absent.gguf"), "ModelDoesNotExistAtUrl", model_server.url("/absent.gguf")),
        (url("/denied.gguf"), "DownloadServerDeniedAccess", model_server.url("/denied.gguf")),
        (url("/broken.gguf"), "DownloadServerErrored", model_server.url("/broken.gguf")),
        (url("/teapot.gguf"), "DownloadServerRejectedRequest", model_server.url("/teapot.gguf")),
        ({"Url": {"url": unreachable}}, "DownloadServerIsUnreachable", unreachable),
        ({"Url": {"url": "ftp://example.com/m.gguf"}}, "DownloadUrlIsMalformed", "ftp://example.com/m.gguf"),
        (hugging_face("test-org/absent-GGUF"), "HuggingFaceModelDoesNotExist", "test-org/absent-GGUF/main/model.gguf"),
        (hugging_face("test-org/private-GGUF"), "HuggingFacePermissions", "test-org/private-GGUF/main/model.gguf"),
    ]
    for model, kind, model_path in cases:
        put_state(cluster, desired_state(model)).raise_for_status()
        agent = wait_for_agent(
            cluster, "a1", lambda a, kind=kind: any(kind in issue for issue in a["issues"]), f"the {kind} issue"
        )
        [issue] = agent["issues"]
        if model_path is not None:
            assert issue == {kind: {"model_path": model_path}}
        assert agent["slots_total"] == 0

    # A template that does not compile: the model loads (raw prompts are served) with the issue.
    put_state(cluster, desired_state(gemma_model_path, override="{% if %}")).raise_for_status()
    agent = wait_for_agent(cluster, "a1", applied_with(gemma_model_path), "Gemma with a broken template")
    [issue] = agent["issues"]
    assert issue["ChatTemplateDoesNotCompile"]["template_content"] == "{% if %}"

    # The fix: the same Gemma through the Hugging Face mirror, no override.
    hugging_face = {"HuggingFace": {"repo_id": "test-org/gemma-GGUF", "filename": "gemma.gguf", "revision": "main"}}
    put_state(cluster, desired_state(hugging_face)).raise_for_status()
    agent = wait_for_agent(
        cluster,
        "a1",
        lambda a: applied_with(a["model_path"])(a) and "hf-home" in (a["model_path"] or ""),
        "the Hugging Face model to load",
        timeout=120,
    )
    assert agent["issues"] == [{"UnableToFindChatTemplate": {"model_path": agent["model_path"]}}]
    assert sha256(Path(agent["model_path"])) == sha256(gemma_model_path)
    assert model_server.requests_for(HF_RESOLVE, "HEAD")
    assert is_done(raw_prompt(cluster, "The capital of France is", 3))

    seen = {next(iter(issue)) for issue in recorder.issues_seen()}
    expected_kinds = {kind for _, kind, _ in cases} | {"ChatTemplateDoesNotCompile"}
    assert expected_kinds <= seen, f"not seen on /api/v1/agents/stream: {expected_kinds - seen}"
