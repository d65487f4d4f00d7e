"""Whether a model may use llama.cpp's extra weight buffer types, given the library's build.

A llama.cpp compiled with AMX (`-march=native` on an Intel Sapphire Rapids or newer, or
`-mamx-int8`) moves quantised weights into its "AMX" buffer type at load time, and the first
multi-token decode then dies with SIGSEGV in `ggml_backend_amx_mul_mat` (`ldtilecfg`): a
llama.cpp bug, unfixed upstream. Loading with `use_extra_bufts = false` (llama-server's
`--no-repack`) keeps the weights in plain CPU buffers and serves correctly, a little slower
(no weight repacking either). The Makefile builds without AMX; this guard protects those
who bring their own llama-cpp-python.
"""

from __future__ import annotations

import re

import attrs

# llama_print_system_info lists a feature of the CPU backend as "NAME = 1" only when it was
# compiled in, e.g. "CPU : SSE3 = 1 | AVX2 = 1 | AMX_INT8 = 1 | REPACK = 1 |".
_AMX_COMPILED_IN = re.compile(r"(?:^|[\s|])AMX_INT8\s*=\s*1\b")

_NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
REBUILD_HINT = (
    f"rebuild it without AMX, as `make install` does: CMAKE_ARGS=\"-DGGML_NATIVE=ON -DCMAKE_C_FLAGS='{_NO_AMX}' "
    f"-DCMAKE_CXX_FLAGS='{_NO_AMX}'\" pip install --no-cache-dir --force-reinstall llama-cpp-python"
)


@attrs.frozen
class ExtraBufferTypesDecision:
    """`use_extra_buffer_types` goes into `llama_model_params.use_extra_bufts`; `warning`, when
    set, is the one line to log about it."""

    use_extra_buffer_types: bool
    warning: str | None = None


def amx_compiled_in(system_info: str) -> bool:
    return _AMX_COMPILED_IN.search(system_info) is not None


def decide_extra_buffer_types(system_info: str, *, allow_amx: bool) -> ExtraBufferTypesDecision:
    """Extra buffer types stay on unless the library has AMX and the operator did not opt in."""
    if not amx_compiled_in(system_info):
        return ExtraBufferTypesDecision(use_extra_buffer_types=True)
    if allow_amx:
        return ExtraBufferTypesDecision(
            use_extra_buffer_types=True,
            warning=(
                "llama.cpp was built with AMX and --allow-amx is set: weights go into its AMX buffers, "
                "which crash with SIGSEGV in ggml_backend_amx_mul_mat on some Linux kernels and CPUs"
            ),
        )
    return ExtraBufferTypesDecision(
        use_extra_buffer_types=False,
        warning=(
            "llama.cpp was built with AMX, whose weight buffers crash with SIGSEGV on the first "
            "multi-token decode (a llama.cpp bug): loading models without extra buffer types "
            f"(slower; pass --allow-amx to take the risk); to get the speed back, {REBUILD_HINT}"
        ),
    )
