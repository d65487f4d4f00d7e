"""What an embedding batch request streams back: one result per document, then a terminal result.

Wire form (externally tagged): ``{"Embedding": {...}}``,
``{"DocumentExceedsBatchSize": {"document_tokens", "n_batch", "source_document_id"}}``,
and the terminal ``"Done"``, ``"EmbeddingsDisabled"``, ``{"Error": "message"}``,
``"EmbeddingRejectedDueToActiveTokenGeneration"``, ``"NoEmbeddingsProduced"``.
"""

from __future__ import annotations

from typing import Union

import attrs

from paddler_trio.protocol.normalization_method import NormalizationMethod
from paddler_trio.protocol.pooling_type import PoolingType


@attrs.frozen
class Embedding:
    """One document's vector and how it was made."""

    embedding: tuple[float, ...]
    normalization_method: NormalizationMethod
    pooling_type: PoolingType
    source_document_id: str


@attrs.frozen
class EmbeddingProduced:
    """``{"Embedding": Embedding}``."""

    embedding: Embedding


@attrs.frozen
class DocumentExceedsBatchSize:
    """A document needs more tokens than one batch holds; the others still go on."""

    document_tokens: int
    n_batch: int
    source_document_id: str


@attrs.frozen
class EmbeddingDone:
    """``"Done"``: every document of the request was answered."""


@attrs.frozen
class EmbeddingsDisabled:
    """``"EmbeddingsDisabled"``: the agent's context is not in embeddings mode."""


@attrs.frozen
class EmbeddingError:
    """``{"Error": "message"}``."""

    message: str


@attrs.frozen
class EmbeddingRejectedDueToActiveTokenGeneration:
    """``"EmbeddingRejectedDueToActiveTokenGeneration"``."""


@attrs.frozen
class NoEmbeddingsProduced:
    """``"NoEmbeddingsProduced"``."""


EmbeddingResult = Union[
    EmbeddingProduced,
    DocumentExceedsBatchSize,
    EmbeddingDone,
    EmbeddingsDisabled,
    EmbeddingError,
    EmbeddingRejectedDueToActiveTokenGeneration,
    NoEmbeddingsProduced,
]

_TERMINAL_TYPES: tuple[type, ...] = (
    EmbeddingDone,
    EmbeddingsDisabled,
    EmbeddingError,
    EmbeddingRejectedDueToActiveTokenGeneration,
    NoEmbeddingsProduced,
)


def is_terminal(result: object) -> bool:
    """True for an ``EmbeddingResult`` that ends its request's stream: ``Done`` and every error."""
    return isinstance(result, _TERMINAL_TYPES)
