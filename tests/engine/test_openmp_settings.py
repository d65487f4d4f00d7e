"""libgomp's spin after each engine step is kept short (paddler_trio/engine/__init__.py), the
user's own OpenMP settings win, and processes started from ours inherit nothing of it."""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = (
    "import os, subprocess, sys\n"
    "import paddler_trio.engine as engine\n"
    "child = subprocess.run([sys.executable, '-c', 'import os; print(os.environ.get(\"GOMP_SPINCOUNT\"))'],\n"
    "                       capture_output=True, text=True, check=True).stdout.strip()\n"
    "maps = open('/proc/self/maps').read()\n"
    "print(os.environ.get('GOMP_SPINCOUNT'), child, 'libgomp' in maps, engine.ENGINE_SPIN_COUNT)\n"
)


def run_probe(**environment: str) -> list[str]:
    env = {key: value for key, value in os.environ.items() if key not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env.update(environment)
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True, timeout=120)
    return result.stdout.split()


def test_the_spin_count_is_set_while_libgomp_loads_and_not_passed_on() -> None:
    ours, child, libgomp_loaded, spin_count = run_probe()
    assert libgomp_loaded == "True"  # it read the setting while loading with llama_cpp
    assert spin_count == "30000"
    assert (ours, child) == ("None", "None")


def test_a_spin_count_or_wait_policy_set_by_the_user_is_left_alone() -> None:
    assert run_probe(GOMP_SPINCOUNT="1000")[:2] == ["1000", "1000"]
    assert run_probe(OMP_WAIT_POLICY="ACTIVE")[:2] == ["None", "None"]
