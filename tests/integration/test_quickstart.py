"""`paddler quickstart`: one process serving a first request, stopped by Ctrl-C or SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs
import httpx
import pytest

from tests.integration.cluster import free_port, wait_until

pytestmark = pytest.mark.slow

# Greedy counting goes on to max_tokens (sampled text may end early).
COUNTING = {"raw_prompt": "1, 2, 3, 4,", "temperature": 0}


@attrs.frozen
class Quickstart:
    process: subprocess.Popen[str]
    log: Path
    banner: str
    inference: int
    management: int
    panel: int


@contextmanager
def quickstart(tmp_path: Path, model: Path) -> Iterator[Quickstart]:
    """`python -m paddler_trio quickstart` on `model` with 2 slots and a 32 MiB prompt state cache,
    once it has printed its banner."""
    inference, management, panel = free_port(), free_port(), free_port()
    log = tmp_path / "quickstart.log"
    process = subprocess.Popen(
        [
            sys.executable, "-m", "paddler_trio", "quickstart",
            "--model", str(model), "--slots", "2", "--threads", "1", "--cache-ram-mib", "32",
            "--inference-addr", f"127.0.0.1:{inference}", "--management-addr", f"127.0.0.1:{management}",
            "--web-admin-panel-addr", f"127.0.0.1:{panel}",
        ],
        stdout=subprocess.PIPE,
        stderr=log.open("wb"),
        text=True,
    )
    try:
        banner = []
        assert process.stdout is not None
        for line in process.stdout:
            banner.append(line)
            if "Press Ctrl-C to stop" in line:
                break
        yield Quickstart(process, log, "".join(banner), inference, management, panel)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_quickstart_serves_a_request_and_stops_on_ctrl_c(tmp_path: Path, gemma_model_path: Path) -> None:
    with quickstart(tmp_path, gemma_model_path) as running:
        text = running.banner
        assert f"http://127.0.0.1:{running.inference}" in text and "curl -N" in text, text + running.log.read_text()
        assert f"web admin panel:     http://127.0.0.1:{running.panel}" in text
        panel_page = httpx.get(f"http://127.0.0.1:{running.panel}/", timeout=5).text
        assert f'data-management-addr="127.0.0.1:{running.management}"' in panel_page
        response = httpx.post(
            f"http://127.0.0.1:{running.inference}/api/v1/continue_from_raw_prompt",
            json={"raw_prompt": "1, 2, 3, 4,", "max_tokens": 8},
            timeout=60,
        )
        lines = [json.loads(line) for line in response.text.splitlines()]
        assert lines[0]["Response"]["generated_by"] == "quickstart"
        assert lines[-1]["Response"]["response"]["GeneratedToken"]["Done"]["usage"]["content_tokens"] == 8
        agents = httpx.get(f"http://127.0.0.1:{running.management}/api/v1/agents", timeout=5).json()["agents"]
        assert [agent["slots_total"] for agent in agents] == [2]
        assert [agent["cache_limit_bytes"] for agent in agents] == [32 * 2**20]
        running.process.send_signal(signal.SIGINT)
        assert running.process.wait(10) == 0
        assert "deregistered from the balancer" in running.log.read_text()


def test_sigterm_lets_the_streaming_request_finish_then_exits_0(tmp_path: Path, gemma_model_path: Path) -> None:
    with quickstart(tmp_path, gemma_model_path) as running:
        url = f"http://127.0.0.1:{running.inference}/api/v1/continue_from_raw_prompt"
        with httpx.stream("POST", url, json={**COUNTING, "max_tokens": 30}, timeout=60) as response:
            lines = response.iter_lines()
            first = json.loads(next(lines))
            running.process.send_signal(signal.SIGTERM)
            rest = [json.loads(line) for line in lines]
        messages = [first, *rest]
        assert messages[-1]["Response"]["response"]["GeneratedToken"]["Done"]["usage"]["content_tokens"] == 30
        assert sum("ContentToken" in message["Response"]["response"]["GeneratedToken"] for message in messages) == 30
        assert running.process.wait(20) == 0, running.log.read_text()[-3000:]
        log = running.log.read_text()
        assert "draining" in log and "Traceback" not in log


def test_a_second_ctrl_c_during_the_drain_exits_at_once_with_130(tmp_path: Path, gemma_model_path: Path) -> None:
    with quickstart(tmp_path, gemma_model_path) as running:
        url = f"http://127.0.0.1:{running.inference}/api/v1/continue_from_raw_prompt"
        with httpx.stream("POST", url, json={**COUNTING, "max_tokens": 2000}, timeout=60) as response:
            lines = response.iter_lines()  # kept: a dropped iterator closes the stream, and the request with it
            next(lines)
            running.process.send_signal(signal.SIGINT)
            wait_until(lambda: "draining:" in running.log.read_text(), 10, "the drain to begin")
            running.process.send_signal(signal.SIGINT)
            assert running.process.wait(10) == 130, running.log.read_text()[-3000:]
        log = running.log.read_text()
        assert "SIGINT again while shutting down: exiting now" in log
        assert "Traceback" not in log
