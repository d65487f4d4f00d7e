"""Where agents get a model file.

``"None"``, ``{"HuggingFace": {...}}``, ``{"Url": {"url"}}`` or ``{"LocalToAgent": "/path"}``.
"""

from __future__ import annotations

from typing import Union

import attrs


@attrs.frozen
class NoModel:
    """``"None"``: no model configured."""


@attrs.frozen
class HuggingFaceModel:
    """``{"HuggingFace": {"repo_id", "filename", "revision"}}``: a file in a Hugging Face repository."""

    repo_id: str
    filename: str
    revision: str


@attrs.frozen
class UrlModel:
    """``{"Url": {"url": ...}}``: downloaded over HTTP(S) into the agent's cache."""

    url: str


@attrs.frozen
class LocalToAgentModel:
    """``{"LocalToAgent": "/path/model.gguf"}``: a path on the agent's own machine."""

    path: str


ModelSource = Union[NoModel, HuggingFaceModel, UrlModel, LocalToAgentModel]
