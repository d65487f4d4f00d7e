"""How far the model download under way has got, shared by the downloader and the status.

Downloaders (a Trio task for URLs, a worker thread for Hugging Face) only bump plain
counters here; `publish` copies them into the agent's status at most every
`PUBLISH_INTERVAL`, so a fast download does not flood the balancer with snapshots, and
log a progress line every `LOG_INTERVAL` for whoever watches the agent's log. Between
downloads (`begin` ... `finish`, one at a time, both called from Trio) it sleeps without a
timer, so a serving agent is not woken four times a second for nothing.
"""

from __future__ import annotations

import logging
import time

import attrs
import trio

from paddler_trio.agent.status import AgentStatus

_logger = logging.getLogger(__name__)

PUBLISH_INTERVAL = 0.25
LOG_INTERVAL = 5.0


@attrs.define
class DownloadProgress:
    filename: str | None = None
    current: int = 0
    total: int = 0  # 0: size unknown
    _downloading: bool = False
    _begun: trio.Event = attrs.field(factory=trio.Event)

    def begin(self) -> None:
        """A download starts (its size and name come with `start`, perhaps from a worker thread)."""
        self._downloading = True
        self._begun.set()

    def start(self, filename: str, *, total: int, current: int = 0) -> None:
        self.filename, self.total, self.current = filename, total, current

    def advance(self, count: int) -> None:
        self.current += count

    def describe(self, elapsed: float, current_at_start: int) -> str:
        """`model.gguf: 42% (105.0 of 250.0 MiB, 12.3 MiB/s)`; the rate since `current_at_start`."""
        mib = 2**20
        rate = (self.current - current_at_start) / mib / elapsed if elapsed > 0 else 0.0
        if self.total:
            share = 100 * self.current / self.total
            return f"{self.filename}: {share:.0f}% ({self.current / mib:.1f} of {self.total / mib:.1f} MiB, {rate:.1f} MiB/s)"
        return f"{self.filename}: {self.current / mib:.1f} MiB so far ({rate:.1f} MiB/s)"

    def finish(self) -> None:
        self.filename, self.total, self.current = None, 0, 0
        self._downloading = False

    async def publish(
        self, status: AgentStatus, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        logged: tuple[str | None, float, int] = (None, time.monotonic(), 0)  # file, since, bytes then
        while True:
            status.update_download(filename=self.filename, current=self.current, total=self.total)
            now = time.monotonic()
            if self.filename != logged[0]:
                logged = (self.filename, now, self.current)
            elif self.filename is not None and now - logged[1] >= LOG_INTERVAL:
                _logger.info("downloading %s", self.describe(now - logged[1], logged[2]))
                logged = (self.filename, now, self.current)
            if self._downloading:
                await trio.sleep(PUBLISH_INTERVAL)
            else:
                await self._begun.wait()
                self._begun = trio.Event()
