"""`Url` model sources: the cache layout, resume with `Range`, and every failure mapped to
Paddler's AgentIssue (spec 7.2), against a local file server."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from paddler_trio.agent.download_progress import DownloadProgress
from paddler_trio.agent.model_source_unavailable import (
    ModelSourceUnavailable,
    cache_failure,
)
from paddler_trio.agent.url_download import download_url
from paddler_trio.protocol import (
    CacheCannotAcquireLock,
    CacheDirectoryIsNotWritable,
    CacheStorageIsFull,
    DownloadInterrupted,
    DownloadServerDeniedAccess,
    DownloadServerErrored,
    DownloadServerIsUnreachable,
    DownloadServerRejectedRequest,
    DownloadUrlIsMalformed,
    ModelCacheIsCorrupted,
    ModelDoesNotExistAtUrl,
)
from tests.integration.cluster import free_port
from tests.model_file_server import ModelFileServer

SIZE = 3 * 2**20 + 12345


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("served") / "model.gguf"
    path.write_bytes(os.urandom(SIZE))
    return path


@pytest.fixture
def server(model_file: Path) -> Iterator[ModelFileServer]:
    files = ModelFileServer(files={"/models/model.gguf": model_file})
    with files.running():
        yield files


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cache_file(cache: Path, url: str) -> Path:
    return cache / hashlib.sha256(url.encode()).hexdigest()


async def test_downloads_into_the_cache_once(server: ModelFileServer, model_file: Path, tmp_path: Path) -> None:
    url = server.url("/models/model.gguf")
    progress = DownloadProgress()
    path = await download_url(url, tmp_path, progress)
    assert path == cache_file(tmp_path, url)
    assert sha256(path) == sha256(model_file)
    assert sorted(os.listdir(tmp_path)) == [path.name, f"{path.name}.lock"]
    assert (progress.filename, progress.current, progress.total) == (None, 0, 0)  # cleared when done
    assert await download_url(url, tmp_path, progress) == path
    assert len(server.requests_for("/models/model.gguf")) == 1  # the second time came from the cache


async def test_an_interrupted_download_resumes_with_a_range_request(
    server: ModelFileServer, model_file: Path, tmp_path: Path
) -> None:
    url = server.url("/models/model.gguf")
    server.drop_after["/models/model.gguf"] = SIZE // 2
    with pytest.raises(ModelSourceUnavailable) as failure:
        await download_url(url, tmp_path, DownloadProgress())
    assert failure.value.issue == DownloadInterrupted(model_path=url)
    assert failure.value.retry
    partial = cache_file(tmp_path, url).with_suffix(".partial")
    kept = partial.stat().st_size
    assert 0 < kept <= SIZE // 2

    path = await download_url(url, tmp_path, DownloadProgress())
    first, second = server.requests_for("/models/model.gguf")
    assert "Range" not in first.headers
    assert second.headers["Range"] == f"bytes={kept}-"
    assert sha256(path) == sha256(model_file)
    assert not partial.exists()


async def test_a_server_that_ignores_the_range_restarts_the_file(
    server: ModelFileServer, model_file: Path, tmp_path: Path
) -> None:
    url = server.url("/models/model.gguf")
    partial = cache_file(tmp_path, url).with_suffix(".partial")
    garbage = b"garbage that must not stay in front"
    partial.write_bytes(garbage)
    server.ignore_range.add("/models/model.gguf")
    path = await download_url(url, tmp_path, DownloadProgress())
    assert server.requests_for("/models/model.gguf")[0].headers["Range"] == f"bytes={len(garbage)}-"
    assert sha256(path) == sha256(model_file)


async def test_a_stale_partial_file_answered_416_is_deleted_and_downloaded_again(
    server: ModelFileServer, model_file: Path, tmp_path: Path
) -> None:
    url = server.url("/models/model.gguf")
    partial = cache_file(tmp_path, url).with_suffix(".partial")
    partial.write_bytes(b"x" * (SIZE + 10))  # longer than the file: the server answers 416
    path = await download_url(url, tmp_path, DownloadProgress())
    first, second = server.requests_for("/models/model.gguf")
    assert first.headers["Range"] == f"bytes={SIZE + 10}-"
    assert "Range" not in second.headers
    assert sha256(path) == sha256(model_file)


@pytest.mark.parametrize(
    ("status", "issue"),
    [
        (404, ModelDoesNotExistAtUrl),
        (401, DownloadServerDeniedAccess),
        (403, DownloadServerDeniedAccess),
        (400, DownloadServerRejectedRequest),
        (500, DownloadServerErrored),
        (503, DownloadServerErrored),
    ],
)
async def test_error_statuses_map_to_paddlers_issues(
    server: ModelFileServer, tmp_path: Path, status: int, issue: type
) -> None:
    server.statuses["/models/model.gguf"] = status
    url = server.url("/models/model.gguf")
    with pytest.raises(ModelSourceUnavailable) as failure:
        await download_url(url, tmp_path, DownloadProgress())
    assert failure.value.issue == issue(model_path=url)
    assert str(status) in str(failure.value)
    assert not cache_file(tmp_path, url).exists()


async def test_an_unreachable_server_and_a_malformed_url(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/model.gguf"
    with pytest.raises(ModelSourceUnavailable) as failure:
        await download_url(url, tmp_path, DownloadProgress())
    assert failure.value.issue == DownloadServerIsUnreachable(model_path=url)
    for malformed in ("ftp://example.com/model.gguf", "not a url", "http:///no-host"):
        with pytest.raises(ModelSourceUnavailable) as failure:
            await download_url(malformed, tmp_path, DownloadProgress())
        assert failure.value.issue == DownloadUrlIsMalformed(model_path=malformed)
        assert not failure.value.retry


async def test_a_download_locked_by_another_process_is_reported(server: ModelFileServer, tmp_path: Path) -> None:
    url = server.url("/models/model.gguf")
    lock_path = cache_file(tmp_path, url).with_suffix(".lock")
    descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(descriptor, fcntl.LOCK_EX)  # another open file description: conflicts like another process
    try:
        with pytest.raises(ModelSourceUnavailable) as failure:
            await download_url(url, tmp_path, DownloadProgress())
        assert failure.value.issue == CacheCannotAcquireLock(model_path=url)
    finally:
        os.close(descriptor)
    assert (await download_url(url, tmp_path, DownloadProgress())).is_file()


async def test_an_unwritable_cache_directory(server: ModelFileServer) -> None:
    url = server.url("/models/model.gguf")
    with pytest.raises(ModelSourceUnavailable) as failure:
        await download_url(url, Path("/sys/paddler-cache/downloaded-models"), DownloadProgress())
    assert failure.value.issue == CacheDirectoryIsNotWritable(model_path=url)


def test_file_system_errors_map_to_cache_issues() -> None:
    cases = [
        (errno.EACCES, CacheDirectoryIsNotWritable),
        (errno.EROFS, CacheDirectoryIsNotWritable),
        (errno.ENOSPC, CacheStorageIsFull),
        (errno.EIO, ModelCacheIsCorrupted),
    ]
    for number, issue in cases:
        assert cache_failure(OSError(number, os.strerror(number)), "u").issue == issue(model_path="u")


async def test_progress_is_reported_while_downloading(server: ModelFileServer, tmp_path: Path) -> None:
    server.chunk_delay["/models/model.gguf"] = 0.01
    progress = DownloadProgress()
    seen: list[tuple[str | None, int, int]] = []

    async def watch() -> None:
        while True:
            seen.append((progress.filename, progress.current, progress.total))
            await trio.sleep(0.05)  # looks at the progress every 50 ms, as a status publisher would

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        await download_url(server.url("/models/model.gguf"), tmp_path, progress)
        nursery.cancel_scope.cancel()
    during = [entry for entry in seen if entry[0] is not None]
    assert during, "no progress was visible during the download"
    assert all(name == "model.gguf" and total == SIZE for name, _, total in during)
    currents = [current for _, current, _ in during]
    assert currents == sorted(currents) and 0 < currents[-1] <= SIZE
