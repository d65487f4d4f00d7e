"""The one llama_context an engine decodes with, and the reusable token batch it fills.

Sequence id i is slot i (`n_seq_max = slots`). The KV cache is not unified (llama.cpp's
default, as in Paddler and llama-server `--parallel N`): each slot owns
`context_size / slots` cells, reported as `tokens_per_slot`.
"""

from __future__ import annotations

import ctypes
import os

import llama_cpp
import numpy as np

from paddler_trio.engine.engine_errors import ContextCannotBeCreated
from paddler_trio.engine.model import LoadedModel
from paddler_trio.protocol import CacheDtype, InferenceParameters, PoolingType

_GGML_TYPES: dict[str, int] = {
    "F32": llama_cpp.GGML_TYPE_F32,
    "F16": llama_cpp.GGML_TYPE_F16,
    "BF16": 30,  # GGML_TYPE_BF16; not exported by the bindings
    "Q8_0": llama_cpp.GGML_TYPE_Q8_0,
    "Q4_0": llama_cpp.GGML_TYPE_Q4_0,
    "Q4_1": llama_cpp.GGML_TYPE_Q4_1,
    "IQ4_NL": llama_cpp.GGML_TYPE_IQ4_NL,
    "Q5_0": llama_cpp.GGML_TYPE_Q5_0,
    "Q5_1": llama_cpp.GGML_TYPE_Q5_1,
}

_POOLING_TYPES: dict[str, int] = {
    "Unspecified": llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED,
    "None": llama_cpp.LLAMA_POOLING_TYPE_NONE,
    "Mean": llama_cpp.LLAMA_POOLING_TYPE_MEAN,
    "Cls": llama_cpp.LLAMA_POOLING_TYPE_CLS,
    "Last": llama_cpp.LLAMA_POOLING_TYPE_LAST,
    "Rank": llama_cpp.LLAMA_POOLING_TYPE_RANK,
}


def _enum_name(value: CacheDtype | PoolingType | str) -> str:
    return value.value if hasattr(value, "value") else str(value)


def default_thread_count() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


class TokenBatch:
    """A `llama_batch` allocated once, filled through numpy views (one sequence per token)."""

    def __init__(self, capacity: int, n_seq_max: int) -> None:
        self.capacity = capacity
        self._batch = llama_cpp.llama_batch_init(capacity, 0, n_seq_max)
        self.tokens = np.ctypeslib.as_array(self._batch.token, shape=(capacity,))
        self.positions = np.ctypeslib.as_array(self._batch.pos, shape=(capacity,))
        self.logits = np.ctypeslib.as_array(self._batch.logits, shape=(capacity,))
        np.ctypeslib.as_array(self._batch.n_seq_id, shape=(capacity,))[:] = 1
        self._seq_ids = self._batch.seq_id
        self.size = 0

    @property
    def raw(self) -> llama_cpp.llama_batch:
        self._batch.n_tokens = self.size
        return self._batch

    def clear(self) -> None:
        self.size = 0

    def add(self, tokens: list[int], first_position: int, sequence: int, logits_on_last: bool) -> int:
        """Append tokens of one sequence; returns the batch index of the last one."""
        start, end = self.size, self.size + len(tokens)
        self.tokens[start:end] = tokens
        self.positions[start:end] = np.arange(first_position, first_position + len(tokens))
        self.logits[start:end] = 0
        if logits_on_last:
            self.logits[end - 1] = 1
        seq_ids = self._seq_ids
        for index in range(start, end):
            seq_ids[index][0] = sequence
        self.size = end
        return end - 1

    @property
    def free_space(self) -> int:
        return self.capacity - self.size

    def close(self) -> None:
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None


class DecodingContext:
    """Owns the llama_context; every method must be called from the engine's worker thread."""

    def __init__(
        self,
        model: LoadedModel,
        parameters: InferenceParameters,
        *,
        slots: int,
        n_threads: int | None = None,
    ) -> None:
        threads = n_threads or default_thread_count()
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = parameters.context_size
        params.n_batch = parameters.n_batch
        # Embedding pooling needs a whole document in one micro-batch.
        params.n_ubatch = parameters.n_batch if parameters.enable_embeddings else min(512, parameters.n_batch)
        params.n_seq_max = slots
        params.n_threads = threads
        params.n_threads_batch = threads
        params.embeddings = parameters.enable_embeddings
        params.pooling_type = _POOLING_TYPES[_enum_name(parameters.pooling_type)]
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
        params.type_k = _GGML_TYPES[_enum_name(parameters.k_cache_dtype)]
        params.type_v = _GGML_TYPES[_enum_name(parameters.v_cache_dtype)]
        context = llama_cpp.llama_init_from_model(model.pointer, params)
        if not context:
            raise ContextCannotBeCreated(
                f"llama.cpp could not create a context of {parameters.context_size} tokens for {slots} slots "
                f"(n_batch {parameters.n_batch}, K cache {_enum_name(parameters.k_cache_dtype)}, "
                f"V cache {_enum_name(parameters.v_cache_dtype)}); see the log for llama.cpp's reason"
            )
        self.pointer = context
        self.model = model
        self.memory = llama_cpp.llama_get_memory(context)
        self.slots = slots
        self.n_batch = parameters.n_batch
        self.tokens_per_slot: int = llama_cpp.llama_n_ctx_seq(context)
        self.embeddings = parameters.enable_embeddings
        self.pooling_type: int = llama_cpp.llama_pooling_type(context)
        self.is_sliding_window = llama_cpp.llama_model_n_swa(model.pointer) > 0
        self.threads = threads
        self.batch = TokenBatch(parameters.n_batch, slots)

    def warm_up(self) -> None:
        """One tiny decode so the first request does not pay graph and buffer set-up."""
        token = self.model.bos_token if self.model.bos_token >= 0 else 0
        self.batch.clear()
        self.batch.add([token], 0, 0, logits_on_last=True)
        llama_cpp.llama_decode(self.pointer, self.batch.raw)
        self.batch.clear()
        llama_cpp.llama_memory_clear(self.memory, True)

    def decode(self) -> int:
        return llama_cpp.llama_decode(self.pointer, self.batch.raw)

    def forget(self, sequence: int, from_position: int = -1) -> bool:
        """Drop a sequence's KV from `from_position` on (-1: all of it)."""
        return bool(llama_cpp.llama_memory_seq_rm(self.memory, sequence, from_position, -1))

    def first_position(self, sequence: int) -> int:
        return llama_cpp.llama_memory_seq_pos_min(self.memory, sequence)

    def state_size(self, sequence: int) -> int:
        """Bytes that `save_state(sequence)` writes (the sequence's KV cells)."""
        return llama_cpp.llama_state_seq_get_size(self.pointer, sequence)

    def save_state(self, sequence: int, size: int) -> ctypes.Array[ctypes.c_uint8] | None:
        """A host copy of the sequence's KV state (`size` from `state_size`); None if llama.cpp wrote nothing."""
        data = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(self.pointer, data, size, sequence)
        return data if written == size else None

    def restore_state(self, data: ctypes.Array[ctypes.c_uint8], sequence: int) -> bool:
        """Load a state from `save_state` (of any sequence) into `sequence`, replacing its KV."""
        return llama_cpp.llama_state_seq_set_data(self.pointer, data, len(data), sequence) > 0

    def clear_all(self) -> None:
        llama_cpp.llama_memory_clear(self.memory, True)

    def close(self) -> None:
        self.batch.close()
        if self.pointer:
            llama_cpp.llama_free(self.pointer)
            self.pointer = None
