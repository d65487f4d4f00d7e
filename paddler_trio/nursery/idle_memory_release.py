"""Giving memory back to the operating system once a burst of load is over.

A thousand clients connecting at once make the balancer allocate tens of MiB of small
objects (sockets, protocol state, buffers). Python frees them when the clients leave, but
the C allocator keeps the freed pages mapped for reuse, so the process's RSS stays at its
high-water mark for good. When the balancer has been busy and is idle again (nothing in
flight, nothing buffered, no tokens relayed since the last look), this collects garbage
and asks glibc to return every free page (`malloc_trim(0)`), which brings RSS back near
its idle level. On a C library without `malloc_trim` only the garbage collection runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import resource
from collections.abc import Callable

import attrs
import trio

_logger = logging.getLogger(__name__)

CHECK_INTERVAL = 5.0


def _load_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        malloc_trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim.restype = ctypes.c_int
    return malloc_trim  # type: ignore[no-any-return]


_MALLOC_TRIM = _load_malloc_trim()


def resident_set_mib() -> float:
    """The process's current RSS (Linux), or its peak where /proc is missing."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def release_memory() -> None:
    """Collect garbage, then hand the allocator's free pages back to the operating system."""
    before = resident_set_mib()
    gc.collect()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
    _logger.info("idle again: memory released, RSS %.1f MiB -> %.1f MiB", before, resident_set_mib())


@attrs.frozen
class LoadSnapshot:
    """What shows whether the balancer is working: anything in flight, buffered, or relayed."""

    in_flight: int
    buffered: int
    tokens_relayed: int

    @property
    def idle(self) -> bool:
        return self.in_flight == 0 and self.buffered == 0


async def release_memory_when_idle(
    observe: Callable[[], LoadSnapshot],
    *,
    interval: float = CHECK_INTERVAL,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Every `interval`, release memory if the balancer worked since the last release and is idle now."""
    task_status.started()
    last = observe()
    worked = False
    while True:
        await trio.sleep(interval)
        now = observe()
        worked = worked or not last.idle or now.tokens_relayed != last.tokens_relayed
        if worked and now.idle and now.tokens_relayed == last.tokens_relayed:
            release_memory()
            worked = False
        last = now
