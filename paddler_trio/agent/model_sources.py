"""A desired state's model source -> a file on this machine (spec 7.2).

`"None"` -> no model; `LocalToAgent` -> the path, if it exists; `Url` -> downloaded into
the agent's cache (`url_download`); `HuggingFace` -> the Hugging Face cache
(`huggingface_download`). Failures raise `ModelSourceUnavailable` with the AgentIssue to
report; `retry=False` on those that retrying cannot fix (a malformed URL, a Hugging Face
file that does not exist: Paddler does not ask for it again either).
"""

from __future__ import annotations

import os

from paddler_trio.agent.download_progress import DownloadProgress
from paddler_trio.agent.huggingface_download import download_from_huggingface
from paddler_trio.agent.model_cache_directory import downloaded_models_directory
from paddler_trio.agent.model_source_unavailable import ModelSourceUnavailable
from paddler_trio.agent.url_download import download_url
from paddler_trio.protocol import (
    HuggingFaceModel,
    LocalToAgentModel,
    ModelFileDoesNotExist,
    ModelSource,
    NoModel,
    UrlModel,
)


async def resolve_model_source(source: ModelSource, progress: DownloadProgress) -> str | None:
    """The local path of `source` (None for `"None"`), downloading it first if needed."""
    if isinstance(source, NoModel):
        return None
    if isinstance(source, LocalToAgentModel):
        if not os.path.isfile(source.path):
            raise ModelSourceUnavailable(
                ModelFileDoesNotExist(model_path=source.path), f"model file {source.path} does not exist"
            )
        return source.path
    if isinstance(source, UrlModel):
        return str(await download_url(source.url, downloaded_models_directory(), progress))
    if isinstance(source, HuggingFaceModel):
        return str(await download_from_huggingface(source, progress))
    raise TypeError(f"unknown model source {source!r}")


def describe_model_source(source: ModelSource) -> str:
    if isinstance(source, LocalToAgentModel):
        return source.path
    if isinstance(source, UrlModel):
        return source.url
    if isinstance(source, HuggingFaceModel):
        return f"huggingface:{source.repo_id}/{source.revision}/{source.filename}"
    return "None"

