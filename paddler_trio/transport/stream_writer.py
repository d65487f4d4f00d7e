"""Writing a TCP stream from its writer task and, while that task is not writing, at once from
any other task (the balancer's agent socket handing a token straight on, see
`proxy/forwarding.py`; the agent's link, see `agent/management_link.py`), with every byte in
the order it was given.

`send_now` writes on the non-blocking socket itself, with no task switch and no wait. When the
socket takes only part of the data (the client reads slowly), the rest is kept and written
before anything else, by a task started for it or by the next `send_all`, whichever runs first.

Inside `writes_held_together()` (the balancer's agent socket around one agent frame, which
holds a token for each request in flight) `send_now` keeps what it is given, and the block's end
writes it: one write per stream, back to back. A client with several streams in the frame (an
inference socket's requests) gets one write instead of one per token, and a client reading
several HTTP streams finds them all ready when it wakes, instead of being woken once for each.
The engine hands a step's results on inside such a block too; the agent's link uses
`hold_until_block_end` to gather the step's replies into one frame written at its end.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Callable, Iterator

import trio

# What the innermost `writes_held_together` block of this task does at its end, in order: a
# writer's held data is written, a batch of messages sent (see `hold_until_block_end`).
_holding: contextvars.ContextVar[list[Callable[[], None]] | None] = contextvars.ContextVar("holding", default=None)


@contextlib.contextmanager
def writes_held_together() -> Iterator[None]:
    """Hold every `send_now` of the block, and write each stream's share at its end (see the
    module docstring). The block must not checkpoint: nothing else may write in between."""
    releases: list[Callable[[], None]] = []
    token = _holding.set(releases)
    try:
        yield
    finally:
        _holding.reset(token)
        for release in releases:
            release()


def hold_until_block_end(release: Callable[[], None]) -> bool:
    """Inside a `writes_held_together` block, have `release` called at its end and return True;
    outside one, return False (the caller then writes at once)."""
    releases = _holding.get()
    if releases is None:
        return False
    releases.append(release)
    return True


class StreamWriter:
    def __init__(self, stream: trio.abc.Stream, nursery: trio.Nursery) -> None:
        """`nursery` runs the task that finishes a partial `send_now`; it must outlive every write."""
        self._stream = stream
        self._nursery = nursery
        # Streams other than plain TCP (TLS) are written by `send_all` only.
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) else None
        self._lock = trio.StrictFIFOLock()
        self._unsent = b""
        self._held: list[bytes] = []
        self._broken = False

    async def send_all(self, data: bytes) -> None:
        """Write `data` after everything given before it; raises as `trio.abc.Stream.send_all` does."""
        async with self._lock:
            data, self._unsent = self._unsent + data, b""
            await self._stream.send_all(data)

    def can_send_now(self) -> bool:
        """Whether `send_now` would write (nothing is being written, or waits to be)."""
        return (
            self._socket is not None
            and self._socket.fileno() >= 0  # -1 once closed: its number may belong to another connection now
            and not self._broken
            and not self._unsent
            and not self._lock.locked()
        )

    def send_now(self, data: bytes) -> bool:
        """Write `data` at once (or at the end of the `writes_held_together` block) if
        `can_send_now`; False when it wrote nothing (the caller then goes through `send_all`,
        whose error tells that the client is gone)."""
        if not self.can_send_now():
            return False
        if not self._held and not hold_until_block_end(self._write_held):
            return self._write(data)
        self._held.append(data)
        return True

    def _write_held(self) -> None:
        data = b"".join(self._held)
        self._held.clear()
        self._write(data)

    def _write(self, data: bytes) -> bool:
        assert self._socket is not None
        try:
            sent = os.write(self._socket.fileno(), data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._broken = True
            return False
        if sent < len(data):
            self._unsent = data[sent:]
            self._nursery.start_soon(self._finish_partial_write)
        return True

    async def _finish_partial_write(self) -> None:
        # A client that is gone shows up in the writer task's next write, or its read side.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.send_all(b"")
