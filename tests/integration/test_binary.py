"""The one-file `dist/paddler` (PyInstaller, paddler.spec) runs outside the virtualenv and serves a request.

Slow: `make binary` builds it when it is missing or older than the sources (the first time it
also compiles the portable llama.cpp that the binary carries, about 5 minutes on two cores).
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import attrs
import httpx
import pytest

from paddler_trio import __version__
from tests.integration.cluster import free_port
from tests.integration.instruction_sets import LLAMA_CPP_LIBRARIES, instructions_beyond_x86_64_v3

pytestmark = pytest.mark.slow

REPOSITORY = Path(__file__).resolve().parents[2]
BINARY = REPOSITORY / "dist" / "paddler"
BUILD_TIMEOUT = 1800


@pytest.fixture(scope="module")
def binary() -> Path:
    """`make binary`: builds the portable llama.cpp's virtualenv and the binary when missing or
    older than the sources, else does nothing."""
    build = subprocess.run(
        ["make", "binary"], check=False, cwd=REPOSITORY, capture_output=True, text=True, timeout=BUILD_TIMEOUT
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


@attrs.frozen
class RunningQuickstart:
    inference: int
    panel: int
    # Where the one-file binary unpacked itself: every library it loads comes from here.
    unpacked: Path


@pytest.fixture(scope="module")
def quickstart(binary: Path, tmp_path_factory: pytest.TempPathFactory, gemma_model_path: Path) -> Iterator[RunningQuickstart]:
    """`dist/paddler quickstart` on Gemma, outside the virtualenv; stopped with Ctrl-C at the end,
    which must end it with exit code 0."""
    home = tmp_path_factory.mktemp("binary-home")
    runtime = tmp_path_factory.mktemp("binary-runtime")
    inference, management, panel = free_port(), free_port(), free_port()
    log = home / "quickstart.log"
    process = subprocess.Popen(
        [
            str(binary), "quickstart", "--model", str(gemma_model_path), "--slots", "1", "--threads", "1",
            "--inference-addr", f"127.0.0.1:{inference}", "--management-addr", f"127.0.0.1:{management}",
            "--web-admin-panel-addr", f"127.0.0.1:{panel}",
        ],
        cwd=home,
        env={**_clean_environment(home), "TMPDIR": str(runtime)},
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
        (unpacked,) = runtime.glob("_MEI*")
        yield RunningQuickstart(inference=inference, panel=panel, unpacked=unpacked)
        process.send_signal(signal.SIGINT)
        assert process.wait(20) == 0, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_binary_quickstart_serves_a_request_and_the_admin_panel(quickstart: RunningQuickstart) -> None:
    response = httpx.post(
        f"http://127.0.0.1:{quickstart.inference}/api/v1/continue_from_raw_prompt",
        json={"raw_prompt": "1, 2, 3, 4,", "max_tokens": 8},
        timeout=60,
    )
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines[-1]["Response"]["response"]["GeneratedToken"]["Done"]["usage"]["content_tokens"] == 8
    script = httpx.get(f"http://127.0.0.1:{quickstart.panel}/static/app.js", timeout=5)
    assert script.status_code == 200 and "navigate" in script.text


def test_binary_carries_a_llama_cpp_that_runs_on_any_x86_64_v3_cpu(quickstart: RunningQuickstart) -> None:
    """`make binary` builds its llama.cpp for x86-64-v3 (AVX2, FMA, F16C, BMI2), not for this
    machine: the libraries the binary unpacked and loaded hold no AVX-512 or AMX instruction,
    which a CPU without them (an AMD one before Zen 4, most Intel desktops) would die of with SIGILL."""
    libraries = sorted(
        path for path in quickstart.unpacked.rglob("lib*.so*") if path.name.startswith(LLAMA_CPP_LIBRARIES)
    )
    assert any(path.name.startswith("libggml-cpu") for path in libraries), sorted(quickstart.unpacked.rglob("*.so*"))
    beyond_baseline = {path.name: instructions_beyond_x86_64_v3(path) for path in libraries}
    assert beyond_baseline == {path.name: [] for path in libraries}
