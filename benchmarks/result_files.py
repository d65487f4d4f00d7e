"""Where the benchmarks keep their JSON results: `benchmarks/results/<name>-<UTC timestamp>.json`."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

RESULTS_DIRECTORY = Path(__file__).resolve().parent / "results"


def save_result(report: dict[str, Any], name: str, label: str | None = None) -> Path:
    """Write `report` (indented) as `<name>[-<label>]-<UTC timestamp>.json`; the path written."""
    RESULTS_DIRECTORY.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    suffix = f"-{label}" if label else ""
    path = RESULTS_DIRECTORY / f"{name}{suffix}-{stamp}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path
