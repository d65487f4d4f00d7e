"""What the benchmarks record about the machine they ran on and the processes they measure
(Linux `/proc`), so every JSON result says where its figures come from."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any


def machine_info() -> dict[str, Any]:
    """CPU model, core count, platform, Python, and the load average when the run starts."""
    cpu_model = platform.processor() or None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu_model": cpu_model,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": [round(value, 2) for value in os.getloadavg()],
    }


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far."""
    return _cpu_seconds(Path(f"/proc/{pid}/stat"))


def main_thread_cpu_seconds(pid: int) -> float:
    """The same for the process's main thread only (a Python process's interpreter, without
    the worker threads of a native library such as llama.cpp's)."""
    return _cpu_seconds(Path(f"/proc/{pid}/task/{pid}/stat"))


def process_wakeups(pid: int) -> int:
    """Voluntary context switches of all the process's threads so far: each is a wait that
    ended (on a socket, a timer, a lock), so their count per unit of work says how often the
    process had to be woken for it."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        with contextlib.suppress(OSError):
            for line in status.read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
    return total


def _cpu_seconds(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_memory_mib(pid: int) -> dict[str, float]:
    """The process's resident set size now and at its peak, in MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = round(int(rest.split()[0]) / 1024, 1)
    return {"rss_mib": values["VmRSS"], "peak_rss_mib": values["VmHWM"]}


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))
