"""`{"HuggingFace": {"repo_id", "filename", "revision"}}` model sources (spec 7.2), through
the standard Hugging Face cache and settings (`HF_HOME`, `HF_HUB_CACHE`, `HF_ENDPOINT`,
`HF_HUB_OFFLINE`, `HF_TOKEN`) with the `huggingface_hub` library.

A file already in the cache is used as is, without asking the Hub (so a pre-filled cache
works offline). Otherwise the file's metadata is fetched first, which tells a missing
file (404 -> `HuggingFaceModelDoesNotExist`, not retried) or a gated one (401/403 ->
`HuggingFacePermissions`) apart before anything is written; a download lock held by
another process is reported as `HuggingFaceCannotAcquireLock` (the 1 s reconciliation
loop tries again) instead of blocking. `huggingface_hub` is blocking: it runs in a worker
thread, and its progress callback stops it when the resolution is cancelled.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import trio

from paddler_trio.agent.download_progress import DownloadProgress
from paddler_trio.agent.model_source_unavailable import (
    ModelSourceUnavailable,
    cache_failure,
)
from paddler_trio.protocol import (
    AgentIssue,
    DownloadServerErrored,
    DownloadServerIsUnreachable,
    DownloadServerRejectedRequest,
    HuggingFaceCannotAcquireLock,
    HuggingFaceModel,
    HuggingFaceModelDoesNotExist,
    HuggingFacePermissions,
)

_logger = logging.getLogger(__name__)


class _DownloadCancelled(Exception):
    """Raised inside huggingface_hub's download loop to stop a download nobody waits for."""


def huggingface_model_path(source: HuggingFaceModel) -> str:
    """How issues name a Hugging Face file (Paddler's `owner/repo/revision/file`)."""
    return f"{source.repo_id}/{source.revision}/{source.filename}"


async def download_from_huggingface(source: HuggingFaceModel, progress: DownloadProgress) -> Path:
    """The file's path in the Hugging Face cache, downloaded first if needed."""
    cancelled = threading.Event()
    progress.begin()
    try:
        path = await trio.to_thread.run_sync(
            functools.partial(_resolve, source, progress, cancelled), abandon_on_cancel=True
        )
    finally:
        cancelled.set()
        progress.finish()
    return Path(path)


def _resolve(source: HuggingFaceModel, progress: DownloadProgress, cancelled: threading.Event) -> str:
    # Imported on first use: a third of a second at start-up for agents that never need it.
    import filelock
    from huggingface_hub import (
        constants,
        get_hf_file_metadata,
        hf_hub_download,
        hf_hub_url,
        try_to_load_from_cache,
    )
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
    from huggingface_hub.file_download import repo_folder_name

    model_path = huggingface_model_path(source)
    cached = try_to_load_from_cache(source.repo_id, source.filename, revision=source.revision)
    if isinstance(cached, str):
        return cached
    if constants.is_offline_mode():
        raise ModelSourceUnavailable(
            HuggingFaceModelDoesNotExist(model_path=model_path),
            f"{model_path} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set",
            retry=False,
        )
    try:
        url = hf_hub_url(source.repo_id, source.filename, revision=source.revision)
        metadata = get_hf_file_metadata(url)
        if metadata.etag is None:
            raise ModelSourceUnavailable(
                DownloadServerErrored(model_path=model_path), f"{url} answered without an ETag"
            )
        lock_path = os.path.join(
            constants.HF_HUB_CACHE, ".locks", repo_folder_name(repo_id=source.repo_id, repo_type="model"),
            f"{metadata.etag}.lock",
        )  # fmt: skip
        _check_lock(lock_path, model_path, filelock)
        progress.start(source.filename, total=metadata.size or 0)
        return hf_hub_download(
            source.repo_id,
            source.filename,
            revision=source.revision,
            tqdm_class=functools.partial(_ProgressBar, progress, cancelled),  # type: ignore[arg-type]
        )
    except ModelSourceUnavailable:
        raise
    except HfHubHTTPError as error:
        raise _refused(model_path, error.response.status_code, error) from None
    except OfflineModeIsEnabled as error:
        raise ModelSourceUnavailable(HuggingFaceModelDoesNotExist(model_path=model_path), str(error), retry=False)
    except OSError as error:
        raise cache_failure(error, model_path) from None
    except _DownloadCancelled:
        raise
    except Exception as error:  # transport errors of the HTTP client huggingface_hub brings along
        raise ModelSourceUnavailable(
            DownloadServerIsUnreachable(model_path=model_path),
            f"cannot download {model_path} from {constants.ENDPOINT}: {error or type(error).__name__}",
        ) from None


def _check_lock(lock_path: str, model_path: str, filelock: Any) -> None:
    """Refuse to queue behind another process's download of the same file (huggingface_hub would wait forever)."""
    os.makedirs(os.path.dirname(lock_path), exist_ok=True)
    probe = filelock.FileLock(lock_path, timeout=0, mode=0o664)
    try:
        probe.acquire()
    except filelock.Timeout:
        raise ModelSourceUnavailable(
            HuggingFaceCannotAcquireLock(lock_path=lock_path, model_path=model_path),
            f"another process is downloading {model_path} (lock {lock_path})",
        ) from None
    probe.release()


def _refused(model_path: str, status_code: int, error: Exception) -> ModelSourceUnavailable:
    issue: AgentIssue
    retry = True
    if status_code == 404:
        issue, retry = HuggingFaceModelDoesNotExist(model_path=model_path), False
    elif status_code in (401, 403):
        issue = HuggingFacePermissions(model_path=model_path)
    elif status_code >= 500:
        issue = DownloadServerErrored(model_path=model_path)
    else:
        issue = DownloadServerRejectedRequest(model_path=model_path)
    first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
    description = f"Hugging Face answered HTTP {status_code} for {model_path}: {first_line}"
    return ModelSourceUnavailable(issue, description, retry=retry)


class _ProgressBar:
    """The `tqdm_class` huggingface_hub reports download progress to (called in the worker thread)."""

    def __init__(self, progress: DownloadProgress, cancelled: threading.Event, **options: Any) -> None:
        self._progress = progress
        self._cancelled = cancelled
        total = options.get("total")
        if total:
            progress.total = int(total)
        progress.current = int(options.get("initial") or 0)

    def update(self, count: int = 1) -> None:
        if self._cancelled.is_set():
            raise _DownloadCancelled()
        self._progress.advance(int(count))

    def close(self) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        pass
