"""A GGUF model loaded once: weights, vocabulary, token pieces, metadata, chat template.

Loading is blocking (seconds); callers run `LoadedModel.load` in a worker thread.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time

import llama_cpp

from paddler_trio.engine.amx_guard import decide_extra_buffer_types
from paddler_trio.engine.engine_errors import ModelCannotBeLoaded, ModelFileDoesNotExist
from paddler_trio.engine.llama_library import ensure_backend_initialised, system_info

_logger = logging.getLogger(__name__)

_GGUF_MAGIC = b"GGUF"
_CHAT_TEMPLATE_KEY = "tokenizer.chat_template"


def _read_string(read: "ctypes._FuncPointer", *args: object) -> str:
    """Call a llama.cpp `(..., char *buf, size_t size) -> int` getter, growing the buffer."""
    size = 256
    while True:
        buffer = ctypes.create_string_buffer(size)
        needed = read(*args, buffer, size)
        if needed < 0:
            return ""
        if needed < size:
            return buffer.value.decode("utf-8", errors="replace")
        size = needed + 1


class LoadedModel:
    """Owns one `llama_model`; free it with `close()`."""

    def __init__(self, path: str, model: llama_cpp.llama_model_p) -> None:
        self.path = path
        self._model = model
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        self.n_vocab: int = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train: int = llama_cpp.llama_model_n_ctx_train(model)
        self.n_embd: int = llama_cpp.llama_model_n_embd(model)
        self.add_bos: bool = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self.bos_token: int = llama_cpp.llama_vocab_bos(self.vocab)
        self.eos_token: int = llama_cpp.llama_vocab_eos(self.vocab)
        self.metadata: dict[str, str] = self._read_metadata()
        self.chat_template: str | None = self.metadata.get(_CHAT_TEMPLATE_KEY) or None
        # One piece per token id, computed once, so detokenising a step is a list lookup.
        self.pieces: list[bytes] = [self._piece(token, special=False) for token in range(self.n_vocab)]
        self.eog_tokens: frozenset[int] = frozenset(
            token for token in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(self.vocab, token)
        )
        self.bos_text = self._piece(self.bos_token, special=True).decode("utf-8", "replace") if self.bos_token >= 0 else ""
        self.eos_text = self._piece(self.eos_token, special=True).decode("utf-8", "replace") if self.eos_token >= 0 else ""

    @property
    def pointer(self) -> llama_cpp.llama_model_p:
        return self._model

    @staticmethod
    def decodes_on_cpu(n_gpu_layers: int) -> bool:
        """Whether a model loaded with `n_gpu_layers` runs its decode on llama.cpp's CPU threads
        (no layers offloaded, or a build without a GPU backend)."""
        ensure_backend_initialised()
        return n_gpu_layers == 0 or not llama_cpp.llama_supports_gpu_offload()

    @classmethod
    def load(cls, path: str, *, n_gpu_layers: int = 0, allow_amx: bool = False) -> "LoadedModel":
        """Load a GGUF file; raises ModelFileDoesNotExist or ModelCannotBeLoaded.

        `allow_amx`: let a llama.cpp built with AMX use its AMX weight buffers (amx_guard.py)."""
        if not os.path.isfile(path):
            raise ModelFileDoesNotExist(path)
        try:
            with open(path, "rb") as file:
                magic = file.read(4)
        except OSError as error:
            raise ModelCannotBeLoaded(path, f"cannot read the file: {error.strerror}") from error
        if magic != _GGUF_MAGIC:
            raise ModelCannotBeLoaded(path, f"not a GGUF file (starts with {magic!r}, expected {_GGUF_MAGIC!r})")
        build = system_info()
        _logger.info("llama.cpp build: %s", build)
        buffer_types = decide_extra_buffer_types(build, allow_amx=allow_amx)
        if buffer_types.warning:
            _logger.warning("%s", buffer_types.warning)
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        params.use_extra_bufts = buffer_types.use_extra_buffer_types
        started = time.perf_counter()
        model = llama_cpp.llama_model_load_from_file(path.encode(), params)
        if not model:
            raise ModelCannotBeLoaded(path, "llama.cpp could not load it (truncated or corrupt GGUF?)")
        loaded = cls(path, model)
        _logger.info(
            "loaded model %s in %.2f s (%d tokens in vocabulary, %d GGUF metadata keys, %.0f MiB on disk)",
            path,
            time.perf_counter() - started,
            loaded.n_vocab,
            len(loaded.metadata),
            os.path.getsize(path) / 2**20,
        )
        return loaded

    def close(self) -> None:
        if self._model:
            llama_cpp.llama_model_free(self._model)
            self._model = None

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool = True) -> list[int]:
        encoded = text.encode("utf-8")
        capacity = len(encoded) + 8
        tokens = (llama_cpp.llama_token * capacity)()
        count = llama_cpp.llama_tokenize(self.vocab, encoded, len(encoded), tokens, capacity, add_special, parse_special)
        if count < 0:
            capacity = -count
            tokens = (llama_cpp.llama_token * capacity)()
            count = llama_cpp.llama_tokenize(self.vocab, encoded, len(encoded), tokens, capacity, add_special, parse_special)
        result = list(tokens[:count])
        # Templates that render `bos_token` themselves would otherwise get a second BOS.
        if add_special and len(result) >= 2 and result[0] == result[1] == self.bos_token:
            del result[0]
        return result

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.pieces[token] for token in tokens).decode("utf-8", errors="replace")

    def _piece(self, token: int, *, special: bool) -> bytes:
        buffer = ctypes.create_string_buffer(64)
        length = llama_cpp.llama_token_to_piece(self.vocab, token, buffer, 64, 0, special)
        if length < 0:
            buffer = ctypes.create_string_buffer(-length)
            length = llama_cpp.llama_token_to_piece(self.vocab, token, buffer, -length, 0, special)
        return buffer.raw[:length]

    def _read_metadata(self) -> dict[str, str]:
        metadata: dict[str, str] = {}
        for index in range(llama_cpp.llama_model_meta_count(self._model)):
            key = _read_string(llama_cpp.llama_model_meta_key_by_index, self._model, index)
            metadata[key] = _read_string(llama_cpp.llama_model_meta_val_str_by_index, self._model, index)
        return metadata
