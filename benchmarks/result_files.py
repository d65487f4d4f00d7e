"""Where the benchmarks keep their JSON results: `benchmarks/results/<name>-<UTC timestamp>.json`."""

from __future__ import annotations

import contextlib
import datetime
import json
import subprocess
from pathlib import Path
from typing import Any

from host_figures import machine_info

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIRECTORY = REPO_ROOT / "benchmarks" / "results"


def report_header(benchmark: str, label: str | None) -> dict[str, Any]:
    """What every result starts with: the benchmark, when, the label, the code measured and the machine."""
    return {
        "benchmark": benchmark,
        "utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "label": label,
        "commit": git_commit(),
        "machine": machine_info(),
    }


def git_commit() -> str | None:
    """The checkout's short commit, with `+dirty` when `paddler_trio/` has uncommitted changes."""
    with contextlib.suppress(Exception):
        completed = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "paddler_trio"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        )
        return completed.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    return None


def save_result(report: dict[str, Any], name: str, label: str | None = None) -> Path:
    """Write `report` (indented) as `<name>[-<label>]-<UTC timestamp>.json`; the path written."""
    RESULTS_DIRECTORY.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    suffix = f"-{label}" if label else ""
    path = RESULTS_DIRECTORY / f"{name}{suffix}-{stamp}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path
