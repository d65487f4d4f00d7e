"""`GET /v1/models` and `GET /v1/models/{id}` (Paddler has neither): the one model the agents
serve, from the cluster's applicable state. Its id is the GGUF file name (a local path or a
URL) or `repo_id/filename` for a Hugging Face file; no model configured means an empty list.
"""

from __future__ import annotations

import posixpath
from typing import Any
from urllib.parse import urlparse

from paddler_trio.proxy.openai_errors import OpenAIError
from paddler_trio.protocol import AgentDesiredState, HuggingFaceModel, LocalToAgentModel, ModelSource, UrlModel

OWNED_BY = "paddler"


def model_id(source: ModelSource) -> str | None:
    if isinstance(source, HuggingFaceModel):
        return f"{source.repo_id}/{source.filename}"
    if isinstance(source, LocalToAgentModel):
        return posixpath.basename(source.path.replace("\\", "/")) or source.path
    if isinstance(source, UrlModel):
        return posixpath.basename(urlparse(source.url).path) or source.url
    return None


def _served_ids(state: AgentDesiredState | None) -> list[str]:
    served = model_id(state.model) if state is not None else None
    return [served] if served is not None else []


def _model(identifier: str, created: int) -> dict[str, Any]:
    return {"id": identifier, "object": "model", "created": created, "owned_by": OWNED_BY}


def model_list(state: AgentDesiredState | None, *, created: int) -> dict[str, Any]:
    return {"object": "list", "data": [_model(identifier, created) for identifier in _served_ids(state)]}


def model_entry(state: AgentDesiredState | None, identifier: str, *, created: int) -> dict[str, Any]:
    if identifier not in _served_ids(state):
        raise OpenAIError(404, f"The model '{identifier}' does not exist", param="model", code="model_not_found")
    return _model(identifier, created)
