"""The balancer's graceful-shutdown trigger.

Work that must end when the balancer stops (a request waiting in the buffer or streaming,
an SSE stream, a WebSocket) runs inside `shutdown.cancel_scope()`; when the signal fires
every such scope is cancelled, and the code after it can tell a shutdown (answer with the
503 envelope, close the socket with 1001) from any other cancellation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio


class ShutdownSignal:
    def __init__(self) -> None:
        self._event = trio.Event()
        self._scopes: set[trio.CancelScope] = set()

    @property
    def triggered(self) -> bool:
        return self._event.is_set()

    def trigger(self) -> None:
        self._event.set()
        for scope in list(self._scopes):
            scope.cancel()

    async def wait(self) -> None:
        await self._event.wait()

    @contextmanager
    def cancel_scope(self) -> Iterator[trio.CancelScope]:
        """A cancel scope that the shutdown cancels (at once, if it already happened)."""
        scope = trio.CancelScope()
        if self.triggered:
            scope.cancel()
        self._scopes.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._scopes.discard(scope)
