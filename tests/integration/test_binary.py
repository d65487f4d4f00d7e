"""The one-file `dist/paddler` (PyInstaller, paddler.spec) runs outside the virtualenv and serves a request.

Slow: the binary is built here when it is missing or older than the sources (minutes on
two cores), then reused.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from paddler_trio import __version__
from tests.integration.cluster import free_port

pytestmark = pytest.mark.slow

REPOSITORY = Path(__file__).resolve().parents[2]
BINARY = REPOSITORY / "dist" / "paddler"
BUILD_TIMEOUT = 1800


def _newest_source() -> float:
    sources = [REPOSITORY / "paddler.spec", *(REPOSITORY / "paddler_trio").rglob("*")]
    return max(path.stat().st_mtime for path in sources if path.is_file() and "__pycache__" not in path.parts)


@pytest.fixture(scope="module")
def binary() -> Path:
    if not BINARY.exists() or BINARY.stat().st_mtime < _newest_source():
        build = subprocess.run(
            [sys.executable, "-m", "PyInstaller", "--noconfirm", "paddler.spec"],
            check=False,
            cwd=REPOSITORY,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
        )
        assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    return BINARY


def _clean_environment(home: Path) -> dict[str, str]:
    """What `env -i PATH=/usr/bin:/bin HOME=...` leaves: no virtualenv, no PYTHONPATH."""
    return {"PATH": "/usr/bin:/bin", "HOME": str(home)}


def test_binary_prints_its_version(binary: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(binary), "--version"],
        check=False,
        cwd=tmp_path,
        env=_clean_environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"paddler {__version__}"


def test_binary_quickstart_serves_a_request_and_the_admin_panel(
    binary: Path, tmp_path: Path, gemma_model_path: Path
) -> None:
    inference, management, panel = free_port(), free_port(), free_port()
    log = tmp_path / "quickstart.log"
    process = subprocess.Popen(
        [
            str(binary), "quickstart", "--model", str(gemma_model_path), "--slots", "1", "--threads", "1",
            "--inference-addr", f"127.0.0.1:{inference}", "--management-addr", f"127.0.0.1:{management}",
            "--web-admin-panel-addr", f"127.0.0.1:{panel}",
        ],
        cwd=tmp_path,
        env=_clean_environment(tmp_path),
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
        assert f"http://127.0.0.1:{inference}" in "".join(banner), "".join(banner) + log.read_text()
        response = httpx.post(
            f"http://127.0.0.1:{inference}/api/v1/continue_from_raw_prompt",
            json={"raw_prompt": "1, 2, 3, 4,", "max_tokens": 8},
            timeout=60,
        )
        lines = [json.loads(line) for line in response.text.splitlines()]
        assert lines[-1]["Response"]["response"]["GeneratedToken"]["Done"]["usage"]["content_tokens"] == 8
        script = httpx.get(f"http://127.0.0.1:{panel}/static/app.js", timeout=5)
        assert script.status_code == 200 and "navigate" in script.text
        process.send_signal(signal.SIGINT)
        assert process.wait(20) == 0, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
