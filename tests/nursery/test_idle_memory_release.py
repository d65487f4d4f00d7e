"""The balancer gives memory back once a burst of load is over, and only then.

Both tests run on Trio's autojump mock clock: their sleeps are the release task's looks
(one a second here), virtual seconds that take no real time.
"""

from __future__ import annotations

import functools
import logging

import pytest
import trio
import trio.testing

from paddler_trio.nursery.idle_memory_release import (
    LoadSnapshot,
    release_memory_when_idle,
)

IDLE = LoadSnapshot(in_flight=0, buffered=0, tokens_relayed=0)
RELEASED = "idle again: memory released"


async def watch(nursery: trio.Nursery, load: list[LoadSnapshot]) -> None:
    """The release task, looking every second at the last snapshot in `load`."""
    await nursery.start(functools.partial(release_memory_when_idle, lambda: load[-1], interval=1.0))


def releases(caplog: pytest.LogCaptureFixture) -> int:
    return sum(RELEASED in record.getMessage() for record in caplog.records)


async def test_memory_is_released_once_after_load_ends(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="paddler_trio.nursery.idle_memory_release")
    load = [IDLE]
    async with trio.open_nursery() as nursery:
        await watch(nursery, load)
        await trio.sleep(5.5)
        assert releases(caplog) == 0, "a balancer that never worked has nothing to give back"

        load.append(LoadSnapshot(in_flight=40, buffered=900, tokens_relayed=100))
        await trio.sleep(1.0)
        load.append(LoadSnapshot(in_flight=3, buffered=0, tokens_relayed=5000))
        await trio.sleep(1.0)
        assert releases(caplog) == 0, "nothing is released while requests are in flight"

        load.append(LoadSnapshot(in_flight=0, buffered=0, tokens_relayed=5000))
        await trio.sleep(5.0)
        assert releases(caplog) == 1

        await trio.sleep(10.0)
        assert releases(caplog) == 1, "an idle balancer releases once, not every interval"
        nursery.cancel_scope.cancel()


async def test_tokens_relayed_between_looks_count_as_work(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="paddler_trio.nursery.idle_memory_release")
    load = [IDLE]
    async with trio.open_nursery() as nursery:
        await watch(nursery, load)
        await trio.sleep(1.5)
        # Short requests came and went between two looks: idle both times, but tokens moved.
        load.append(LoadSnapshot(in_flight=0, buffered=0, tokens_relayed=64))
        await trio.sleep(3.0)
        assert releases(caplog) == 1
        nursery.cancel_scope.cancel()
