"""Which instructions a shared library holds beyond x86-64-v3, read with binutils' objdump.

x86-64-v3 is AVX2, FMA, F16C, BMI2 and what came before. Beyond it, on the CPUs llama.cpp
targets: AVX-512 (EVEX-encoded: zmm registers, xmm/ymm 16-31, opmask registers k0-k7,
embedded broadcasts), AMX (tile registers and their instructions) and AVX-VNNI.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

# llama.cpp's libraries as llama-cpp-python installs them (llama_cpp/lib).
LLAMA_CPP_LIBRARIES = ("libggml", "libllama", "libmtmd", "libllava")

_BEYOND_X86_64_V3 = re.compile(
    r"%zmm\d+"
    r"|%[xy]mm(?:1[6-9]|2\d|3[01])\b"
    r"|%k[0-7]\b"
    r"|\{1to\d+\}"
    r"|%tmm\d\b|\b(?:ld|st)tilecfg\b|\btdpb[a-z]*\b|\btileloadd\w*\b|\btilestored\b|\btilezero\b"
    r"|\{vex\}\s+vpdpbu?s"
)


def instructions_beyond_x86_64_v3(library: Path, *, at_most: int = 5) -> list[str]:
    """Up to `at_most` disassembled lines of `library` that need more than x86-64-v3."""
    disassembly = subprocess.run(
        ["objdump", "--disassemble", "--no-show-raw-insn", str(library)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    found: list[str] = []
    for line in disassembly.splitlines():
        if _BEYOND_X86_64_V3.search(line):
            found.append(line.strip())
            if len(found) == at_most:
                break
    return found
