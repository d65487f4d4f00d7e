"""Why a model source could not be turned into a local file, as the AgentIssue to report."""

from __future__ import annotations

import errno

from paddler_trio.protocol import (
    AgentIssue,
    CacheDirectoryIsNotWritable,
    CacheStorageIsFull,
    ModelCacheIsCorrupted,
)


class ModelSourceUnavailable(Exception):
    """`issue` goes into the status; `retry` False: retrying the same desired state cannot help."""

    def __init__(self, issue: AgentIssue, description: str, *, retry: bool = True) -> None:
        super().__init__(description)
        self.issue = issue
        self.retry = retry


def cache_failure(error: OSError, model_path: str) -> ModelSourceUnavailable:
    """A file system error in the download cache, mapped as Paddler maps it."""
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        issue: AgentIssue = CacheDirectoryIsNotWritable(model_path=model_path)
    elif error.errno in (errno.ENOSPC, errno.EDQUOT):
        issue = CacheStorageIsFull(model_path=model_path)
    else:
        issue = ModelCacheIsCorrupted(model_path=model_path)
    return ModelSourceUnavailable(issue, f"model cache error for {model_path}: {error}")
