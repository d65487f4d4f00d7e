"""The soak benchmark, short: 100 streaming clients for 10 s (NDJSON and WebSocket; completions,
cancellations, disconnects) against a real balancer and 8 scripted paced agents of 8 slots (so the buffer is used), and every
request accounted for at the end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"


def test_short_soak_accounts_for_every_request_and_leaks_nothing() -> None:
    completed = subprocess.run(
        [sys.executable, str(SOAK), "--clients", "100", "--slots", "8", "--duration", "6", "--rounds", "2", "--no-save"],
        capture_output=True,
        check=False,
        text=True,
        timeout=90,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    figures = json.loads(completed.stdout.strip().splitlines()[-1])
    requests = figures["requests"]
    assert requests["sent"] > 100
    assert requests["unaccounted"] == 0, requests
    assert requests["unaccounted_by_reason"] == {}
    assert requests["failed_by_reason"] == {}, requests  # nothing goes wrong when nothing is broken
    assert requests["sent"] == requests["completed"] + requests["cancelled_by_client"]
    assert requests["completed"] > 0 and requests["cancelled_by_client"] > 0
    assert set(requests["by_transport"]) == {"ndjson", "websocket"}
    end = figures["end_state"]
    assert end["slots_processing"] == [0] * 8
    assert end["slots_total"] == [8] * 8
    assert end["buffered_requests"] == 0
    balancer = figures["balancer"]
    assert balancer["peak_buffered_requests"] > 0  # 100 clients, 64 slots: the buffer was used
    assert balancer["open_fds_end"] <= balancer["open_fds_start"], balancer
    assert balancer["rss_growth_percent"] < 10, balancer  # idle RSS after the last round against after the first
    assert figures["invariants_hold"]
