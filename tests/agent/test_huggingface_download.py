"""`HuggingFace` model sources through huggingface_hub, against a local Hub mirror
(`HF_ENDPOINT`) and a temporary Hugging Face cache; never the internet.

huggingface_hub reads its settings once, at import; agent processes get them from the
environment, and these in-process tests set the same module settings directly.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import filelock
import pytest
from huggingface_hub import constants

from paddler_trio.agent.download_progress import DownloadProgress
from paddler_trio.agent.huggingface_download import download_from_huggingface
from paddler_trio.agent.model_source_unavailable import ModelSourceUnavailable
from paddler_trio.protocol import (
    DownloadServerErrored,
    DownloadServerIsUnreachable,
    HuggingFaceCannotAcquireLock,
    HuggingFaceModel,
    HuggingFaceModelDoesNotExist,
    HuggingFacePermissions,
)
from tests.integration.cluster import free_port
from tests.model_file_server import ModelFileServer

SOURCE = HuggingFaceModel(repo_id="test-org/tiny-GGUF", filename="tiny.gguf", revision="main")
RESOLVE_PATH = "/test-org/tiny-GGUF/resolve/main/tiny.gguf"
MODEL_PATH = "test-org/tiny-GGUF/main/tiny.gguf"


def use_hub(monkeypatch: pytest.MonkeyPatch, endpoint: str, cache: Path, *, offline: bool = False) -> None:
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.gguf"
    path.write_bytes(os.urandom(2**20 + 7))
    return path


@pytest.fixture
def hub(model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModelFileServer]:
    server = ModelFileServer(files={RESOLVE_PATH: model_file})
    with server.running():
        use_hub(monkeypatch, server.endpoint, tmp_path / "hf-cache")
        yield server


async def test_downloads_through_the_mirror_then_serves_from_the_cache_even_offline(
    hub: ModelFileServer, model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    progress = DownloadProgress()
    path = await download_from_huggingface(SOURCE, progress)
    assert path.is_relative_to(tmp_path / "hf-cache")
    assert path.read_bytes() == model_file.read_bytes()
    assert hub.requests_for(RESOLVE_PATH, "HEAD") and len(hub.requests_for(RESOLVE_PATH, "GET")) == 1
    assert (progress.filename, progress.current, progress.total) == (None, 0, 0)

    requests = len(hub.requests)
    assert await download_from_huggingface(SOURCE, progress) == path
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert await download_from_huggingface(SOURCE, progress) == path
    assert len(hub.requests) == requests  # cache hits ask the Hub nothing
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(model_file.read_bytes()).digest()


async def test_offline_without_the_file_in_the_cache(hub: ModelFileServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelSourceUnavailable) as failure:
        await download_from_huggingface(SOURCE, DownloadProgress())
    assert failure.value.issue == HuggingFaceModelDoesNotExist(model_path=MODEL_PATH)
    assert "HF_HUB_OFFLINE" in str(failure.value)
    assert hub.requests == []


@pytest.mark.parametrize(
    ("status", "issue", "retry"),
    [
        (404, HuggingFaceModelDoesNotExist(model_path=MODEL_PATH), False),
        (401, HuggingFacePermissions(model_path=MODEL_PATH), True),
        (403, HuggingFacePermissions(model_path=MODEL_PATH), True),
        (500, DownloadServerErrored(model_path=MODEL_PATH), True),
    ],
)
async def test_hub_refusals_map_to_paddlers_issues(
    hub: ModelFileServer, status: int, issue: object, retry: bool
) -> None:
    hub.statuses[RESOLVE_PATH] = status
    with pytest.raises(ModelSourceUnavailable) as failure:
        await download_from_huggingface(SOURCE, DownloadProgress())
    assert failure.value.issue == issue
    assert failure.value.retry is retry
    assert f"HTTP {status}" in str(failure.value)


async def test_a_missing_file_in_an_existing_repository(hub: ModelFileServer) -> None:
    missing = HuggingFaceModel(repo_id="test-org/tiny-GGUF", filename="absent.gguf", revision="main")
    with pytest.raises(ModelSourceUnavailable) as failure:
        await download_from_huggingface(missing, DownloadProgress())
    assert failure.value.issue == HuggingFaceModelDoesNotExist(model_path="test-org/tiny-GGUF/main/absent.gguf")


async def test_a_download_locked_by_another_process_is_reported_not_waited_for(
    hub: ModelFileServer, model_file: Path, tmp_path: Path
) -> None:
    etag = hub.etag_of(model_file)
    lock_path = tmp_path / "hf-cache" / ".locks" / "models--test-org--tiny-GGUF" / f"{etag}.lock"
    lock_path.parent.mkdir(parents=True)
    held = filelock.FileLock(str(lock_path))
    with held, pytest.raises(ModelSourceUnavailable) as failure:
        await download_from_huggingface(SOURCE, DownloadProgress())
    assert failure.value.issue == HuggingFaceCannotAcquireLock(lock_path=str(lock_path), model_path=MODEL_PATH)
    assert (await download_from_huggingface(SOURCE, DownloadProgress())).read_bytes() == model_file.read_bytes()


async def test_an_unreachable_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_hub(monkeypatch, f"http://127.0.0.1:{free_port()}", tmp_path / "hf-cache")
    with pytest.raises(ModelSourceUnavailable) as failure:
        await download_from_huggingface(SOURCE, DownloadProgress())
    assert failure.value.issue == DownloadServerIsUnreachable(model_path=MODEL_PATH)
