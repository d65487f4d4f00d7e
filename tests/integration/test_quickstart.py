"""`paddler quickstart`: one process serving a first request, stopped by Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import httpx
import pytest

from tests.integration.cluster import free_port

pytestmark = pytest.mark.slow


def test_quickstart_serves_a_request_and_stops_on_ctrl_c(tmp_path, gemma_model_path):
    inference, management, panel = free_port(), free_port(), free_port()
    log = tmp_path / "quickstart.log"
    process = subprocess.Popen(
        [
            sys.executable, "-m", "paddler_trio", "quickstart",
            "--model", str(gemma_model_path), "--slots", "2", "--threads", "1",
            "--inference-addr", f"127.0.0.1:{inference}", "--management-addr", f"127.0.0.1:{management}",
            "--web-admin-panel-addr", f"127.0.0.1:{panel}",
        ],
        stdout=subprocess.PIPE,
        stderr=log.open("wb"),
        text=True,
    )
    try:
        banner = []
        for line in process.stdout:
            banner.append(line)
            if "Press Ctrl-C to stop" in line:
                break
        text = "".join(banner)
        assert f"http://127.0.0.1:{inference}" in text and "curl -N" in text, text + log.read_text()
        assert f"web admin panel:     http://127.0.0.1:{panel}" in text
        assert f'data-management-addr="127.0.0.1:{management}"' in httpx.get(f"http://127.0.0.1:{panel}/", timeout=5).text
        response = httpx.post(
            f"http://127.0.0.1:{inference}/api/v1/continue_from_raw_prompt",
            json={"raw_prompt": "1, 2, 3, 4,", "max_tokens": 8},
            timeout=60,
        )
        lines = [json.loads(line) for line in response.text.splitlines()]
        assert lines[0]["Response"]["generated_by"] == "quickstart"
        assert lines[-1]["Response"]["response"]["GeneratedToken"]["Done"]["usage"]["content_tokens"] == 8
        agents = httpx.get(f"http://127.0.0.1:{management}/api/v1/agents", timeout=5).json()["agents"]
        assert [agent["slots_total"] for agent in agents] == [2]
        process.send_signal(signal.SIGINT)
        assert process.wait(10) == 0
        assert "deregistered from the balancer" in log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
