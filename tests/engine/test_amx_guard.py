"""Models load without llama.cpp's extra buffer types when its build has AMX, unless the operator
opts in; the decision is read from llama_print_system_info, so no AMX hardware is needed."""

from __future__ import annotations

import pytest

from paddler_trio.engine.amx_guard import amx_compiled_in, decide_extra_buffer_types
from paddler_trio.engine.llama_library import system_info

# What llama_print_system_info printed for a native build on an Intel Xeon (Sapphire Rapids),
# and for our portable build (x86-64-v3) on an AMD EPYC.
SAPPHIRE_RAPIDS_NATIVE = (
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX_VNNI = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | "
    "AVX512 = 1 | AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | AMX_INT8 = 1 | LLAMAFILE = 1 | "
    "OPENMP = 1 | REPACK = 1 | "
)
PORTABLE = (
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | LLAMAFILE = 1 | "
    "OPENMP = 1 | REPACK = 1 | "
)


def test_amx_is_seen_only_where_the_library_reports_it() -> None:
    assert amx_compiled_in(SAPPHIRE_RAPIDS_NATIVE)
    assert not amx_compiled_in(PORTABLE)
    assert not amx_compiled_in(PORTABLE.replace("REPACK = 1", "AMX_INT8 = 0"))
    assert not amx_compiled_in("CPU : NO_AMX_INT8 = 1 | ")


def test_a_build_without_amx_keeps_extra_buffer_types_and_says_nothing() -> None:
    for allow_amx in (False, True):
        decision = decide_extra_buffer_types(PORTABLE, allow_amx=allow_amx)
        assert decision.use_extra_buffer_types
        assert decision.warning is None


def test_a_build_with_amx_loads_without_extra_buffer_types_and_says_why_and_how_to_rebuild() -> None:
    decision = decide_extra_buffer_types(SAPPHIRE_RAPIDS_NATIVE, allow_amx=False)
    assert not decision.use_extra_buffer_types
    assert decision.warning is not None
    assert "\n" not in decision.warning
    assert "SIGSEGV" in decision.warning
    assert "--allow-amx" in decision.warning
    assert "pip install --no-cache-dir --force-reinstall llama-cpp-python" in decision.warning


def test_the_operator_may_opt_in_to_amx_and_is_warned() -> None:
    decision = decide_extra_buffer_types(SAPPHIRE_RAPIDS_NATIVE, allow_amx=True)
    assert decision.use_extra_buffer_types
    assert decision.warning is not None and "--allow-amx" in decision.warning


@pytest.mark.skipif(not amx_compiled_in(system_info()), reason="the installed llama.cpp has no AMX")
def test_the_installed_library_is_guarded() -> None:
    assert not decide_extra_buffer_types(system_info(), allow_amx=False).use_extra_buffer_types


def test_the_installed_library_reports_its_cpu_features() -> None:
    info = system_info()
    assert "CPU :" in info and "AVX2 = 1" in info
