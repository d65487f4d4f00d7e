"""InferenceParameters: Paddler's defaults, the deterministic preset, and validate()."""

from __future__ import annotations

import attrs
import pytest

from paddler_trio.protocol import CacheDtype, InferenceParameters, PoolingType, from_json, to_json


def test_defaults_are_paddlers() -> None:
    assert attrs.asdict(InferenceParameters()) == {
        "n_batch": 2048,
        "context_size": 8192,
        "embedding_batch_size": 256,
        "enable_embeddings": False,
        "image_resize_to_fit": 1024,
        "k_cache_dtype": CacheDtype.Q8_0,
        "v_cache_dtype": CacheDtype.Q8_0,
        "min_p": 0.05,
        "n_gpu_layers": 0,
        "penalty_frequency": 0.0,
        "penalty_last_n": -1,
        "penalty_presence": 0.8,
        "penalty_repeat": 1.1,
        "pooling_type": PoolingType.LAST,
        "temperature": 0.8,
        "top_k": 80,
        "top_p": 0.8,
    }


def test_deterministic_preset_changes_only_sampling() -> None:
    assert InferenceParameters.deterministic() == attrs.evolve(
        InferenceParameters(),
        min_p=0.0,
        penalty_frequency=0.0,
        penalty_presence=0.0,
        penalty_repeat=1.0,
        temperature=0.0,
        top_k=1,
        top_p=1.0,
    )
    assert InferenceParameters.deterministic().validate() == []


def test_round_trip() -> None:
    parameters = attrs.evolve(InferenceParameters(), pooling_type=PoolingType.CLS, v_cache_dtype=CacheDtype.IQ4_NL)
    assert from_json(to_json(parameters), InferenceParameters) == parameters


def test_defaults_are_valid() -> None:
    assert InferenceParameters().validate() == []


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"image_resize_to_fit": 0}, "image_resize_to_fit must be greater than zero"),
        ({"embedding_batch_size": 0}, "embedding_batch_size must be greater than zero"),
        ({"n_batch": 0}, "n_batch must be greater than zero (got 0)"),
        ({"context_size": -1}, "context_size must be greater than zero (got -1)"),
        ({"temperature": -0.1}, "temperature must not be negative (got -0.1)"),
        ({"top_p": 0.0}, "top_p must be greater than 0 and at most 1 (got 0.0)"),
        ({"top_p": 1.5}, "top_p must be greater than 0 and at most 1 (got 1.5)"),
        ({"min_p": 1.5}, "min_p must be between 0 and 1 (got 1.5)"),
        ({"top_k": -1}, "top_k must not be negative (got -1)"),
        ({"penalty_last_n": -2}, "penalty_last_n must be -1 (whole context), 0 (disabled) or positive (got -2)"),
    ],
)
def test_validate_names_each_problem(changes: dict[str, object], problem: str) -> None:
    assert attrs.evolve(InferenceParameters(), **changes).validate() == [problem]


def test_validate_reports_every_problem() -> None:
    parameters = attrs.evolve(InferenceParameters(), image_resize_to_fit=0, embedding_batch_size=0, top_k=-5)
    assert len(parameters.validate()) == 3
