"""Embeddings mode on the real Gemma model: pooling, normalisation, limits, mode errors."""

from __future__ import annotations

import math

import attrs

from paddler_trio.engine.engine import Engine, EngineSettings
from paddler_trio.protocol import (
    ContinueFromRawPromptParams,
    DocumentExceedsBatchSize,
    EmbeddingDone,
    EmbeddingInputDocument,
    EmbeddingProduced,
    EmbeddingsDisabled,
    GenerateEmbeddingBatchParams,
    InferenceParameters,
    L2Normalization,
    NoNormalization,
    RmsNormNormalization,
    TokenGenerationDisabled,
)
from tests.engine.engine_harness import raw

EMBEDDINGS = attrs.evolve(InferenceParameters(), enable_embeddings=True, context_size=1024, n_batch=128)


async def embed(engine: Engine, params: GenerateEmbeddingBatchParams) -> list:
    async with engine.generate_embedding_batch(params) as results:
        return [result async for result in results]


def documents(count: int) -> tuple[EmbeddingInputDocument, ...]:
    return tuple(EmbeddingInputDocument(id=f"doc-{i}", content=f"Document number {i} is about topic {i * 7}.") for i in range(count))


async def test_l2_embeddings_have_unit_norm_and_cover_every_document(gemma_model_path):
    async with Engine.open(EngineSettings(str(gemma_model_path), slots=2, inference_parameters=EMBEDDINGS)) as engine:
        results = await embed(engine, GenerateEmbeddingBatchParams(input_batch=documents(5), normalization_method=L2Normalization()))
    produced = [result.embedding for result in results if isinstance(result, EmbeddingProduced)]
    assert isinstance(results[-1], EmbeddingDone)
    assert sorted(embedding.source_document_id for embedding in produced) == [f"doc-{i}" for i in range(5)]
    for embedding in produced:
        norm = math.sqrt(sum(value * value for value in embedding.embedding))
        assert abs(norm - 1.0) < 1e-3
        assert len(embedding.embedding) == 640  # Gemma 3 270M's width


async def test_rms_and_no_normalisation(gemma_model_path):
    async with Engine.open(EngineSettings(str(gemma_model_path), slots=2, inference_parameters=EMBEDDINGS)) as engine:
        rms = await embed(engine, GenerateEmbeddingBatchParams(input_batch=documents(1), normalization_method=RmsNormNormalization(epsilon=1e-6)))
        plain = await embed(engine, GenerateEmbeddingBatchParams(input_batch=documents(1), normalization_method=NoNormalization()))
    rms_vector = rms[0].embedding.embedding
    assert abs(math.sqrt(sum(v * v for v in rms_vector) / len(rms_vector)) - 1.0) < 1e-3
    plain_vector = plain[0].embedding.embedding
    scale = math.sqrt(sum(v * v for v in plain_vector) / len(plain_vector))
    assert all(abs(a - b / scale) < 1e-3 for a, b in zip(rms_vector, plain_vector))


async def test_document_longer_than_n_batch_is_reported_and_others_embedded(gemma_model_path):
    long_document = EmbeddingInputDocument(id="long", content="word " * 500)
    async with Engine.open(EngineSettings(str(gemma_model_path), slots=2, inference_parameters=EMBEDDINGS)) as engine:
        results = await embed(
            engine,
            GenerateEmbeddingBatchParams(input_batch=(long_document, *documents(1)), normalization_method=L2Normalization()),
        )
    oversized = [result for result in results if isinstance(result, DocumentExceedsBatchSize)]
    assert oversized and oversized[0].source_document_id == "long" and oversized[0].n_batch == 128
    assert any(isinstance(result, EmbeddingProduced) for result in results)


async def test_modes_refuse_each_others_requests(gemma_model_path):
    async with Engine.open(EngineSettings(str(gemma_model_path), slots=1, inference_parameters=EMBEDDINGS)) as engine:
        outcome = await raw(engine, ContinueFromRawPromptParams(raw_prompt="Hi", max_tokens=3))
        assert outcome.terminal == TokenGenerationDisabled(
            "token generation is disabled because this agent is running in embeddings-only mode"
        )
    generation = attrs.evolve(InferenceParameters(), context_size=512, n_batch=128)
    async with Engine.open(EngineSettings(str(gemma_model_path), slots=1, inference_parameters=generation)) as engine:
        results = await embed(engine, GenerateEmbeddingBatchParams(input_batch=documents(1), normalization_method=L2Normalization()))
        assert results == [EmbeddingsDisabled()]
