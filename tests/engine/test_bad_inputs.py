"""Bad models, settings and requests give clear errors instead of crashes."""

from __future__ import annotations

import attrs
import pytest

from paddler_trio.engine.engine import Engine, EngineSettings
from paddler_trio.engine.engine_errors import (
    InvalidEngineSettings,
    InvalidRequest,
    ModelCannotBeLoaded,
    ModelFileDoesNotExist,
)
from paddler_trio.protocol import ContinueFromRawPromptParams, InferenceParameters

SMALL = attrs.evolve(InferenceParameters.deterministic(), context_size=512, n_batch=128)


async def test_unknown_model_path(tmp_path):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ModelFileDoesNotExist, match="does not exist"):
        async with Engine.open(EngineSettings(str(missing), slots=1, inference_parameters=SMALL)):
            pass


async def test_file_that_is_not_gguf(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"this is not a model" * 100)
    with pytest.raises(ModelCannotBeLoaded, match="not a GGUF file"):
        async with Engine.open(EngineSettings(str(junk), slots=1, inference_parameters=SMALL)):
            pass


async def test_truncated_gguf(tmp_path, gemma_model_path):
    truncated = tmp_path / "truncated.gguf"
    with open(gemma_model_path, "rb") as source, open(truncated, "wb") as target:
        target.write(source.read(5_000_000))
    with pytest.raises(ModelCannotBeLoaded, match="could not load"):
        async with Engine.open(EngineSettings(str(truncated), slots=1, inference_parameters=SMALL)):
            pass


async def test_zero_slots_is_refused_before_loading(gemma_model_path):
    with pytest.raises(InvalidEngineSettings, match="slots must be at least 1"):
        async with Engine.open(EngineSettings(str(gemma_model_path), slots=0, inference_parameters=SMALL)):
            pass


async def test_invalid_inference_parameters_are_refused(gemma_model_path):
    broken = attrs.evolve(SMALL, context_size=0)
    with pytest.raises(InvalidEngineSettings, match="context_size"):
        async with Engine.open(EngineSettings(str(gemma_model_path), slots=1, inference_parameters=broken)):
            pass


async def test_negative_max_tokens(gemma_model_path):
    async with Engine.open(EngineSettings(str(gemma_model_path), slots=1, inference_parameters=SMALL)) as engine:
        with pytest.raises(InvalidRequest, match="max_tokens must be 0 or more"):
            async with engine.continue_from_raw_prompt(ContinueFromRawPromptParams(raw_prompt="Hi", max_tokens=-1)):
                pass
        assert engine.scheduler.slots_busy == 0


async def test_prompt_longer_than_a_slot_is_refused(gemma_model_path):
    from paddler_trio.protocol import SamplerError
    from tests.engine.engine_harness import raw

    async with Engine.open(EngineSettings(str(gemma_model_path), slots=2, inference_parameters=SMALL)) as engine:
        outcome = await raw(engine, ContinueFromRawPromptParams(raw_prompt="word " * 400, max_tokens=4))
        assert isinstance(outcome.terminal, SamplerError)
        assert "a slot holds at most 256" in outcome.terminal.message
        assert engine.scheduler.slots_busy == 0



async def test_a_nul_byte_in_a_prompt_or_a_document_is_refused_as_paddler_does(gemma_model_path):
    from paddler_trio.protocol import (
        EmbeddingError,
        EmbeddingInputDocument,
        GenerateEmbeddingBatchParams,
        NoNormalization,
        SamplerError,
    )
    from tests.engine.engine_harness import raw

    async with Engine.open(EngineSettings(str(gemma_model_path), slots=1, inference_parameters=SMALL)) as engine:
        outcome = await raw(engine, ContinueFromRawPromptParams(raw_prompt="before\0after", max_tokens=4))
        assert outcome.results == [SamplerError("failed to tokenize prompt: it contains a NUL byte")]  # no token first
        assert engine.scheduler.slots_busy == 0
    embeddings = attrs.evolve(SMALL, enable_embeddings=True)
    async with Engine.open(EngineSettings(str(gemma_model_path), slots=1, inference_parameters=embeddings)) as engine:
        batch = GenerateEmbeddingBatchParams(
            input_batch=(EmbeddingInputDocument(id="nul-document", content="before\0after"),),
            normalization_method=NoNormalization(),
        )
        async with engine.generate_embedding_batch(batch) as results:
            assert [result async for result in results] == [
                EmbeddingError('failed to tokenize document "nul-document": it contains a NUL byte')
            ]
