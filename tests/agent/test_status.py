"""The agent's status holder: versioned, every change wakes waiters, no-op updates bump nothing."""

from __future__ import annotations

import trio
import trio.testing

from paddler_trio.agent.download_progress import DownloadProgress
from paddler_trio.agent.status import AgentStatus
from paddler_trio.protocol import ModelFileDoesNotExist, StateApplicationStatus


async def test_changes_bump_the_version_and_wake_waiters() -> None:
    status = AgentStatus(desired_slots_total=2)
    assert status.snapshot().version == 0
    status.update(slots_total=0, model_path=None, issues=())
    assert status.version == 0  # nothing changed

    async def change_later() -> None:
        await trio.testing.wait_all_tasks_blocked()  # the test waits for the change
        status.update(issues=[ModelFileDoesNotExist("/x")], state_application_status=StateApplicationStatus.STUCK)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(change_later)
        with trio.fail_after(1):
            await status.wait_for_change(0)
    snapshot = status.snapshot()
    assert snapshot.version == 1
    assert snapshot.issues == frozenset({ModelFileDoesNotExist("/x")})
    assert snapshot.model_path is None and snapshot.state_application_status is StateApplicationStatus.STUCK


async def test_slots_processing_counts_taken_slots_and_wait_until_sees_the_drain() -> None:
    status = AgentStatus(desired_slots_total=2)
    status.take_slot()
    status.take_slot()
    assert status.snapshot().slots_processing == 2

    async def finish_requests() -> None:
        for _ in range(2):
            await trio.testing.wait_all_tasks_blocked()  # the test waits for the drain
            status.release_slot()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(finish_requests)
        with trio.fail_after(1):
            await status.wait_until(lambda: status.slots_processing == 0)
    assert status.version == 4


def test_download_progress_describes_itself_for_the_log() -> None:
    progress = DownloadProgress()
    progress.start("model.gguf", total=250 * 2**20, current=5 * 2**20)
    progress.advance(100 * 2**20)
    assert progress.describe(10.0, 5 * 2**20) == "model.gguf: 42% (105.0 of 250.0 MiB, 10.0 MiB/s)"
    progress.start("other.gguf", total=0)
    progress.advance(3 * 2**20)
    assert progress.describe(2.0, 0) == "other.gguf: 3.0 MiB so far (1.5 MiB/s)"


async def test_download_progress_is_published_while_downloading_and_not_polled_between_downloads(
    autojump_clock: trio.testing.MockClock,
) -> None:
    status = AgentStatus(desired_slots_total=2)
    progress = DownloadProgress()
    published: list[tuple[str | None, int, int]] = []
    update_download = status.update_download

    def record(*, filename: str | None, current: int, total: int) -> None:
        published.append((filename, current, total))
        update_download(filename=filename, current=current, total=total)

    status.update_download = record  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        await nursery.start(progress.publish, status)
        await trio.sleep(2)  # mock clock, as are the sleeps below: they stand for the publisher's ticks
        assert published == [(None, 0, 0)]  # idle: once at start, then no timer at all

        progress.begin()
        progress.start("model.gguf", total=100)
        progress.advance(40)
        await trio.sleep(0.1)
        assert status.snapshot().download_filename == "model.gguf"
        assert status.snapshot().download_current == 40
        progress.finish()
        await trio.sleep(1)
        assert status.snapshot().download_filename is None
        polled = len(published)
        await trio.sleep(2)
        assert len(published) == polled
        nursery.cancel_scope.cancel()


def test_a_projector_change_bumps_the_version_but_stays_out_of_the_paddler_snapshot() -> None:
    status = AgentStatus(desired_slots_total=1)
    status.update(model_path="/m.gguf", multimodal_projection_path="/mmproj.gguf")
    assert (status.version, status.multimodal_projection_path) == (1, "/mmproj.gguf")
    status.update(model_path="/m.gguf")  # left out: kept
    assert (status.version, status.multimodal_projection_path) == (1, "/mmproj.gguf")
    # Sent only to balancers that offer status extensions (the link adds it), never in the base snapshot.
    assert status.snapshot().multimodal_projection_path is None
    status.update(multimodal_projection_path="/other-mmproj.gguf")
    status.update(multimodal_projection_path=None)
    assert (status.version, status.multimodal_projection_path) == (3, None)
