"""`GET /v1/models` and `GET /v1/models/{id}` (Paddler has neither): the models the agents serve
(`openai_model_routing.ServedModels`). The engine agents' model comes from the cluster's
applicable state: its id is the GGUF file name (a local path or a URL) or `repo_id/filename` for
a Hugging Face file. Each llama-server agent's is llama-server's name for it. No model
configured and no llama-server agent means an empty list.
"""

from __future__ import annotations

import posixpath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from paddler_trio.proxy.openai_errors import OpenAIError
from paddler_trio.protocol import HuggingFaceModel, LocalToAgentModel, ModelSource, UrlModel

if TYPE_CHECKING:
    from paddler_trio.proxy.openai_model_routing import ServedModels

OWNED_BY = "paddler"


def model_id(source: ModelSource) -> str | None:
    if isinstance(source, HuggingFaceModel):
        return f"{source.repo_id}/{source.filename}"
    if isinstance(source, LocalToAgentModel):
        return posixpath.basename(source.path.replace("\\", "/")) or source.path
    if isinstance(source, UrlModel):
        return posixpath.basename(urlparse(source.url).path) or source.url
    return None


def _model(identifier: str, created: int) -> dict[str, Any]:
    return {"id": identifier, "object": "model", "created": created, "owned_by": OWNED_BY}


def model_list(served_ids: list[str], *, created: int) -> dict[str, Any]:
    return {"object": "list", "data": [_model(identifier, created) for identifier in served_ids]}


def model_entry(served: ServedModels, identifier: str, *, created: int) -> dict[str, Any]:
    if not served.knows(identifier):
        raise OpenAIError(404, f"The model '{identifier}' does not exist", param="model", code="model_not_found")
    return _model(identifier, created)
