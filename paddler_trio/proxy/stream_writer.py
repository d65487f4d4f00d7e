"""Writing a client's TCP stream from its writer task and, while that task is not writing, at
once from any other task (the agent socket's reader handing a token straight on, see
`forwarding.py`), with every byte in the order it was given.

`send_now` writes on the non-blocking socket itself, with no task switch and no wait. When the
socket takes only part of the data (the client reads slowly), the rest is kept and written
before anything else, by a task started for it or by the next `send_all`, whichever runs first.
"""

from __future__ import annotations

import contextlib
import os

import trio


class StreamWriter:
    def __init__(self, stream: trio.abc.Stream, nursery: trio.Nursery) -> None:
        """`nursery` runs the task that finishes a partial `send_now`; it must outlive every write."""
        self._stream = stream
        self._nursery = nursery
        # Streams other than plain TCP (TLS) are written by `send_all` only.
        self._fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else None
        self._lock = trio.StrictFIFOLock()
        self._unsent = b""
        self._broken = False

    async def send_all(self, data: bytes) -> None:
        """Write `data` after everything given before it; raises as `trio.abc.Stream.send_all` does."""
        async with self._lock:
            data, self._unsent = self._unsent + data, b""
            await self._stream.send_all(data)

    def can_send_now(self) -> bool:
        """Whether `send_now` would write (nothing is being written, or waits to be)."""
        return self._fd is not None and not self._broken and not self._unsent and not self._lock.locked()

    def send_now(self, data: bytes) -> bool:
        """Write `data` at once if `can_send_now`; False when it wrote nothing (the caller then
        goes through `send_all`, whose error tells that the client is gone)."""
        if not self.can_send_now():
            return False
        assert self._fd is not None
        try:
            sent = os.write(self._fd, data)
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
