"""How far the model download under way has got, shared by the downloader and the status.

Downloaders (a Trio task for URLs, a worker thread for Hugging Face) only bump plain
counters here; `publish` copies them into the agent's status at most every
`PUBLISH_INTERVAL`, so a fast download does not flood the balancer with snapshots.
"""

from __future__ import annotations

import attrs
import trio

from paddler_trio.agent.status import AgentStatus

PUBLISH_INTERVAL = 0.25


@attrs.define
class DownloadProgress:
    filename: str | None = None
    current: int = 0
    total: int = 0  # 0: size unknown

    def start(self, filename: str, *, total: int, current: int = 0) -> None:
        self.filename, self.total, self.current = filename, total, current

    def advance(self, count: int) -> None:
        self.current += count

    def finish(self) -> None:
        self.filename, self.total, self.current = None, 0, 0

    async def publish(
        self, status: AgentStatus, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        while True:
            status.update_download(filename=self.filename, current=self.current, total=self.total)
            await trio.sleep(PUBLISH_INTERVAL)
