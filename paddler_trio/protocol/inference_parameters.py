"""The cluster-wide llama.cpp settings every agent applies (part of the desired state)."""

from __future__ import annotations

import attrs

from paddler_trio.protocol.cache_dtype import CacheDtype
from paddler_trio.protocol.pooling_type import PoolingType
from paddler_trio.protocol.sampling_bounds import sampling_problems


@attrs.frozen(kw_only=True)
class InferenceParameters:
    """Paddler's ``InferenceParameters``. Every field is required on the wire; these are Paddler's defaults."""

    n_batch: int = 2048
    context_size: int = 8192
    embedding_batch_size: int = 256
    enable_embeddings: bool = False
    image_resize_to_fit: int = 1024
    k_cache_dtype: CacheDtype = CacheDtype.Q8_0
    v_cache_dtype: CacheDtype = CacheDtype.Q8_0
    min_p: float = 0.05
    n_gpu_layers: int = 0
    penalty_frequency: float = 0.0
    penalty_last_n: int = -1
    penalty_presence: float = 0.8
    penalty_repeat: float = 1.1
    pooling_type: PoolingType = PoolingType.LAST
    temperature: float = 0.8
    top_k: int = 80
    top_p: float = 0.8

    @classmethod
    def deterministic(cls) -> InferenceParameters:
        """Greedy sampling without penalties over the defaults (Paddler's test preset)."""
        return cls(
            min_p=0.0,
            penalty_frequency=0.0,
            penalty_presence=0.0,
            penalty_repeat=1.0,
            temperature=0.0,
            top_k=1,
            top_p=1.0,
        )

    def validate(self) -> list[str]:
        """Every problem with these values, as human sentences; empty when they are usable."""
        problems: list[str] = []
        if self.n_batch <= 0:
            problems.append(f"n_batch must be greater than zero (got {self.n_batch})")
        if self.context_size <= 0:
            problems.append(f"context_size must be greater than zero (got {self.context_size})")
        if self.embedding_batch_size <= 0:
            problems.append("embedding_batch_size must be greater than zero")
        if self.image_resize_to_fit <= 0:
            problems.append("image_resize_to_fit must be greater than zero")
        if self.penalty_last_n < -1:
            problems.append(
                f"penalty_last_n must be -1 (whole context), 0 (disabled) or positive (got {self.penalty_last_n})"
            )
        problems.extend(
            sampling_problems(temperature=self.temperature, top_p=self.top_p, min_p=self.min_p, top_k=self.top_k)
        )
        return problems
