"""`{"Url": {"url"}}` model sources: download once into the agent's cache (spec 7.2).

The file is `<cache>/downloaded-models/<sha256(url) hex>`; while it downloads it is
`<hash>.partial`, under an exclusive lock on `<hash>.lock` (another process downloading
the same URL -> `CacheCannotAcquireLock`). An interrupted download resumes where it
stopped with `Range: bytes=N-`: a 206 is appended after checking its `Content-Range`
starts at N; a 200 means the server ignored the range (start over); a 416 means the
partial file is stale (delete it, start over). The file is renamed into place once
complete. Every failure becomes the AgentIssue Paddler reports for it.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import trio

from paddler_trio.agent.download_progress import DownloadProgress
from paddler_trio.agent.model_source_unavailable import (
    ModelSourceUnavailable,
    cache_failure,
)
from paddler_trio.protocol import (
    AgentIssue,
    CacheCannotAcquireLock,
    DownloadInterrupted,
    DownloadServerDeniedAccess,
    DownloadServerErrored,
    DownloadServerIsUnreachable,
    DownloadServerRejectedRequest,
    DownloadUrlIsMalformed,
    ModelDoesNotExistAtUrl,
)

_logger = logging.getLogger(__name__)

TIMEOUT = httpx.Timeout(10.0)  # connect and read (and write, pool), as Paddler's reqwest client
CHUNK_SIZE = 1 << 20
_CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/(\d+|\*)")


class _StartOver(Exception):
    """The partial file cannot be resumed (416, or a 206 for another offset)."""


async def download_url(url: str, directory: Path, progress: DownloadProgress) -> Path:
    """The cached file for `url`, downloaded first if needed; `ModelSourceUnavailable` otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ModelSourceUnavailable(
            DownloadUrlIsMalformed(model_path=url), f"model URL {url!r} is not an http(s) URL", retry=False
        )
    digest = hashlib.sha256(url.encode()).hexdigest()
    final = directory / digest
    if final.is_file():
        return final
    try:
        directory.mkdir(parents=True, exist_ok=True)
        lock = os.open(directory / f"{digest}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise cache_failure(error, url) from None
    progress.begin()
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ModelSourceUnavailable(
                CacheCannotAcquireLock(model_path=url), f"another process is downloading {url} into {directory}"
            ) from None
        if final.is_file():  # the other process finished while we waited for the lock
            return final
        partial = directory / f"{digest}.partial"
        try:
            await _download(url, partial, progress)
        except _StartOver:
            partial.unlink(missing_ok=True)
            await _download(url, partial, progress)
        try:
            os.replace(partial, final)
        except OSError as error:
            raise cache_failure(error, url) from None
        _logger.info("downloaded %s to %s", url, final)
        return final
    finally:
        progress.finish()
        os.close(lock)  # releases the lock


async def _download(url: str, partial: Path, progress: DownloadProgress) -> None:
    try:
        offset = partial.stat().st_size if partial.exists() else 0
    except OSError as error:
        raise cache_failure(error, url) from None
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        async with (
            httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=True) as client,
            client.stream("GET", url, headers=headers) as response,
        ):
            if response.status_code == 416 and offset:
                _logger.warning("%s refused to resume at byte %d: starting over", url, offset)
                raise _StartOver()
            if response.status_code >= 400:
                raise _refused(url, response.status_code)
            if offset and response.status_code == 206:
                if _range_start(response) != offset:
                    _logger.warning(
                        "%s resumed at the wrong place (%s): starting over",
                        url,
                        response.headers.get("content-range"),
                    )
                    raise _StartOver()
                mode = "ab"
                _logger.info("resuming the download of %s at byte %d", url, offset)
            else:
                offset, mode = 0, "wb"  # a 200 answers with the whole file
            length = response.headers.get("content-length")
            total = offset + int(length) if length is not None and length.isdigit() else 0
            progress.start(os.path.basename(urlsplit(url).path) or url, total=total, current=offset)
            await _save(response, partial, mode, url, progress)
            if total and progress.current != total:
                raise _interrupted(url, Exception(f"got {progress.current} of {total} bytes"))
    except httpx.TimeoutException as error:
        if isinstance(error, httpx.ConnectTimeout):
            raise _unreachable(url, error) from None
        raise _interrupted(url, error) from None
    except (httpx.ConnectError, httpx.UnsupportedProtocol, httpx.InvalidURL) as error:
        raise _unreachable(url, error) from None
    except httpx.TransportError as error:
        raise _interrupted(url, error) from None


async def _save(response: httpx.Response, partial: Path, mode: str, url: str, progress: DownloadProgress) -> None:
    try:
        file = await trio.open_file(partial, mode)
    except OSError as error:
        raise cache_failure(error, url) from None
    async with file:
        async for chunk in response.aiter_bytes(CHUNK_SIZE):
            try:
                await file.write(chunk)
            except OSError as error:
                raise cache_failure(error, url) from None
            progress.advance(len(chunk))
        try:
            await file.flush()
            await trio.to_thread.run_sync(os.fsync, file.fileno())
        except OSError as error:
            raise cache_failure(error, url) from None


def _range_start(response: httpx.Response) -> int | None:
    match = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", "").strip())
    return int(match.group(1)) if match else None


def _refused(url: str, status_code: int) -> ModelSourceUnavailable:
    issue: AgentIssue
    if status_code == 404:
        issue = ModelDoesNotExistAtUrl(model_path=url)
    elif status_code in (401, 403):
        issue = DownloadServerDeniedAccess(model_path=url)
    elif status_code >= 500:
        issue = DownloadServerErrored(model_path=url)
    else:
        issue = DownloadServerRejectedRequest(model_path=url)
    return ModelSourceUnavailable(issue, f"the server of {url} answered HTTP {status_code}")


def _unreachable(url: str, error: Exception) -> ModelSourceUnavailable:
    return ModelSourceUnavailable(
        DownloadServerIsUnreachable(model_path=url),
        f"cannot reach the server of {url}: {error or type(error).__name__}",
    )


def _interrupted(url: str, error: Exception) -> ModelSourceUnavailable:
    return ModelSourceUnavailable(
        DownloadInterrupted(model_path=url),
        f"the download of {url} was interrupted ({error or type(error).__name__}); it will resume",
    )
