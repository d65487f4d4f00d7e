"""Body of ``POST /api/v1/generate_embedding_batch``."""

from __future__ import annotations

import attrs

from paddler_trio.protocol.normalization_method import NormalizationMethod


@attrs.frozen
class EmbeddingInputDocument:
    """``{"id": str, "content": str}``; results refer to the document by ``id``."""

    id: str
    content: str


@attrs.frozen
class GenerateEmbeddingBatchParams:
    """``{"input_batch": [EmbeddingInputDocument], "normalization_method": NormalizationMethod}``."""

    input_batch: tuple[EmbeddingInputDocument, ...]
    normalization_method: NormalizationMethod
