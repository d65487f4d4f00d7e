"""A real etcd (Debian's `etcd-server` package, `/usr/bin/etcd`) on free loopback ports with its own
data directory, for the tests of `--state-database etcd://`. Stopped by SIGKILL, as a crash
would, and started again on the same data directory and ports.

Synchronous on purpose: the tests that use it drive real processes (cluster.py) or run it
beside a Trio test, and starting or stopping it takes one call.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import attrs
import httpx

from tests.integration.cluster import free_port, wait_until

START_LIMIT = 20.0


def etcd_executable() -> str:
    """etcd's path; a missing etcd fails the test with how to install it (these tests are never skipped)."""
    executable = shutil.which("etcd")
    if executable is None:
        raise AssertionError(
            "etcd is not installed: the tests of --state-database etcd:// run a real etcd. "
            "Install Debian's package as root ('apt-get install -y etcd-server'; `make install-test` does it)."
        )
    return executable


@attrs.define
class EtcdServer:
    directory: Path
    client_port: int = attrs.field(factory=free_port)
    peer_port: int = attrs.field(factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None, "etcd is running already"
        self.starts += 1
        peer = f"http://127.0.0.1:{self.peer_port}"
        log = (self.directory / f"etcd-{self.starts}.log").open("wb")
        self.process = subprocess.Popen(
            [
                etcd_executable(),
                "--name", "test",
                "--data-dir", str(self.directory / "data"),
                "--listen-client-urls", self.endpoint,
                "--advertise-client-urls", self.endpoint,
                "--listen-peer-urls", peer,
                "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"test={peer}",
            ],  # fmt: skip
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_until(self._healthy, START_LIMIT, "etcd to answer")

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"etcd exited:\n{self.log()[-3000:]}")
        try:
            return httpx.get(f"{self.endpoint}/health", timeout=1).json().get("health") == "true"
        except (httpx.HTTPError, ValueError):
            return False

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log(self) -> str:
        return "".join(path.read_text(errors="replace") for path in sorted(self.directory.glob("etcd-*.log")))

    def get(self, key: str) -> bytes | None:
        """The key's value, read straight from etcd."""
        answer = httpx.post(f"{self.endpoint}/v3/kv/range", json={"key": _b64(key.encode())}, timeout=5).json()
        kvs = answer.get("kvs") or []
        return base64.b64decode(kvs[0].get("value", "")) if kvs else None

    def put(self, key: str, value: bytes) -> None:
        """Write the key straight to etcd, as another writer (etcdctl) would."""
        response = httpx.post(f"{self.endpoint}/v3/kv/put", json={"key": _b64(key.encode()), "value": _b64(value)}, timeout=5)
        response.raise_for_status()

    def delete(self, key: str) -> None:
        response = httpx.post(f"{self.endpoint}/v3/kv/deleterange", json={"key": _b64(key.encode())}, timeout=5)
        response.raise_for_status()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
