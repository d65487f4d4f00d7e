"""Real `paddler balancer` / `paddler agent` processes with security flags (keys, secret, TLS),
on free loopback ports, for the tests of this folder."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx

from tests.integration.cluster import PaddlerProcess, free_port, wait_until


@attrs.define
class SecuredBalancer:
    process: PaddlerProcess
    inference_port: int
    management_port: int
    openai_port: int
    scheme: str
    verify: Any

    def url(self, service: str) -> str:
        port = {"inference": self.inference_port, "management": self.management_port, "openai": self.openai_port}
        return f"{self.scheme}://127.0.0.1:{port[service]}"

    def ws_url(self, service: str, path: str) -> str:
        return self.url(service).replace("http", "ws", 1) + path

    @property
    def management_addr(self) -> str:
        return f"127.0.0.1:{self.management_port}"


def spawn(directory: Path, name: str, arguments: list[str], environment: Mapping[str, str] | None = None) -> PaddlerProcess:
    log_path = directory / f"{name}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "paddler_trio", *arguments],
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(environment or {})},
    )
    return PaddlerProcess(name, process, log_path)


@contextmanager
def secured_balancer(
    directory: Path,
    *flags: str,
    environment: Mapping[str, str] | None = None,
    tls_ca: Path | None = None,
) -> Iterator[SecuredBalancer]:
    """A balancer with the three services on; every process is stopped at the end."""
    ports = [free_port() for _ in range(3)]
    process = spawn(
        directory,
        "balancer",
        [
            "balancer",
            "--inference-addr",
            f"127.0.0.1:{ports[0]}",
            "--management-addr",
            f"127.0.0.1:{ports[1]}",
            "--compat-openai-addr",
            f"127.0.0.1:{ports[2]}",
            *flags,
        ],
        environment,
    )
    balancer = SecuredBalancer(
        process, *ports, scheme="https" if tls_ca else "http", verify=ssl.create_default_context(cafile=str(tls_ca)) if tls_ca else True
    )

    def healthy() -> bool:
        if process.process.poll() is not None:
            raise AssertionError(f"the balancer exited:\n{process.log()[-3000:]}")
        try:
            return all(
                httpx.get(f"{balancer.url(service)}/health", timeout=1, verify=balancer.verify).text == "OK"
                for service in ("inference", "management", "openai")
            )
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, 30, "the balancer")
        yield balancer
    finally:
        process.stop()


def refusal_lines(log: str, service: str, reason: str) -> list[str]:
    return [line for line in log.splitlines() if f"{service} service refused" in line and reason in line]
