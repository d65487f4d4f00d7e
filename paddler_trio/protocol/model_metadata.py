"""GGUF metadata of the loaded model, as an agent reports it."""

from __future__ import annotations

from collections.abc import Mapping

import attrs


@attrs.frozen
class ModelMetadata:
    """``{"metadata": {gguf_key: string_value}}``; keys are emitted sorted, as Paddler's BTreeMap does."""

    metadata: Mapping[str, str]
