"""A real `paddler balancer` process on free loopback ports, driven from a Trio test: its
addresses come from its log, which the test can read as it goes."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import trio

START_LIMIT = 20.0
_LISTENING = re.compile(r"(inference|management) service listening on http://(\S+)")


@attrs.define
class BalancerProcess:
    process: trio.Process
    inference: str
    management: str
    log: list[str]


@asynccontextmanager
async def balancer_process(*args: str) -> AsyncIterator[BalancerProcess]:
    command = [
        sys.executable, "-m", "paddler_trio", "balancer",
        "--inference-addr", "127.0.0.1:0", "--management-addr", "127.0.0.1:0", *args,
    ]  # fmt: skip
    process = await trio.lowlevel.open_process(command, stderr=subprocess.PIPE)
    log: list[str] = []
    addresses: dict[str, str] = {}
    ready = trio.Event()

    async def read_log() -> None:
        assert process.stderr is not None
        buffered = b""
        async for chunk in process.stderr:
            buffered += chunk
            *lines, buffered = buffered.split(b"\n")
            for line in lines:
                text = line.decode(errors="replace")
                log.append(text)
                match = _LISTENING.search(text)
                if match:
                    addresses[match.group(1)] = match.group(2)
                    if len(addresses) == 2:
                        ready.set()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_log)
            with trio.fail_after(START_LIMIT):
                await ready.wait()
            yield BalancerProcess(process, addresses["inference"], addresses["management"], log)
            nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
