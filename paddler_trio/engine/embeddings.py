"""Pooled document embeddings on a context created in embeddings mode.

Documents are packed greedily into decode batches of at most `n_batch` tokens and
`slots` sequences; each batch is decoded in one worker-thread call (the KV is cleared
first), its pooled vectors normalised and handed out before the next batch starts.
"""

from __future__ import annotations

import math

import attrs
import llama_cpp
import numpy as np

from paddler_trio.engine.context import DecodingContext
from paddler_trio.protocol import (
    DocumentExceedsBatchSize,
    Embedding,
    EmbeddingInputDocument,
    L2Normalization,
    NoNormalization,
    NormalizationMethod,
    PoolingType,
    RmsNormNormalization,
)


def normalize(vector: np.ndarray, method: NormalizationMethod) -> np.ndarray:
    if isinstance(method, L2Normalization):
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm > 0.0 else vector
    if isinstance(method, RmsNormNormalization):
        return vector / math.sqrt(float(np.mean(vector.astype(np.float64) ** 2)) + method.epsilon)
    assert isinstance(method, NoNormalization)
    return vector


@attrs.frozen
class TokenizedDocument:
    id: str
    tokens: tuple[int, ...]


def pack_documents(
    documents: list[TokenizedDocument], *, n_batch: int, max_sequences: int
) -> list[list[TokenizedDocument]]:
    """Greedy packing in input order; every document must already fit in `n_batch`."""
    packs: list[list[TokenizedDocument]] = []
    current: list[TokenizedDocument] = []
    used = 0
    for document in documents:
        if current and (used + len(document.tokens) > n_batch or len(current) == max_sequences):
            packs.append(current)
            current, used = [], 0
        current.append(document)
        used += len(document.tokens)
    if current:
        packs.append(current)
    return packs


def split_oversized(
    documents: list[EmbeddingInputDocument], tokenized: list[tuple[int, ...]], n_batch: int
) -> tuple[list[TokenizedDocument], list[DocumentExceedsBatchSize]]:
    fitting: list[TokenizedDocument] = []
    oversized: list[DocumentExceedsBatchSize] = []
    for document, tokens in zip(documents, tokenized):
        if len(tokens) > n_batch:
            oversized.append(
                DocumentExceedsBatchSize(document_tokens=len(tokens), n_batch=n_batch, source_document_id=document.id)
            )
        elif tokens:
            fitting.append(TokenizedDocument(document.id, tokens))
    return fitting, oversized


def embed_pack(
    context: DecodingContext,
    pack: list[TokenizedDocument],
    normalization: NormalizationMethod,
    pooling_type: PoolingType,
) -> list[Embedding]:
    """Decode one pack (worker thread) and return its normalised pooled embeddings."""
    context.clear_all()
    batch = context.batch
    batch.clear()
    last_indices = [batch.add(list(document.tokens), 0, sequence, True) for sequence, document in enumerate(pack)]
    status = context.decode()
    if status != 0:
        raise RuntimeError(f"llama.cpp failed to decode the embedding batch (status {status})")
    n_embd = context.model.n_embd
    results: list[Embedding] = []
    pooled = context.pooling_type != llama_cpp.LLAMA_POOLING_TYPE_NONE
    for sequence, document in enumerate(pack):
        pointer = (
            llama_cpp.llama_get_embeddings_seq(context.pointer, sequence)
            if pooled
            else llama_cpp.llama_get_embeddings_ith(context.pointer, last_indices[sequence])
        )
        if not pointer:
            raise RuntimeError("llama.cpp returned no embedding for a document")
        vector = np.ctypeslib.as_array(pointer, shape=(n_embd,)).astype(np.float32, copy=True)
        vector = normalize(vector, normalization)
        results.append(
            Embedding(
                embedding=tuple(float(value) for value in vector),
                normalization_method=normalization,
                pooling_type=pooling_type,
                source_document_id=document.id,
            )
        )
    context.clear_all()
    return results
