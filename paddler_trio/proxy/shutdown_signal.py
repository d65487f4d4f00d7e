"""The balancer's graceful shutdown: a drain, then the trigger.

`begin_drain()` comes first (the first SIGINT/SIGTERM): from then on new inference requests
are refused with the 503 "balancer is shutting down" envelope, while those in flight go on
(`RequestForwarder`, the reverse proxy), for at most the shutdown grace period
(`nursery/balancer.py`), which waits for every request that counts itself in (`in_flight()`).

Then `trigger()`: work that must end when the balancer stops (a request still waiting in the
buffer or streaming, an SSE stream, a WebSocket) runs inside `shutdown.cancel_scope()`; every
such scope is cancelled, and the code after it can tell a shutdown (answer with the 503
envelope, close the socket with 1001) from any other cancellation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio


class ShutdownSignal:
    def __init__(self) -> None:
        self._drain_begun = trio.Event()
        self._event = trio.Event()
        self._scopes: set[trio.CancelScope] = set()
        self._requests_in_flight = 0
        self._all_finished = trio.Event()

    @property
    def draining(self) -> bool:
        """New requests are refused (the drain has begun, or the shutdown itself)."""
        return self._drain_begun.is_set()

    def begin_drain(self) -> None:
        self._drain_begun.set()

    async def wait_for_drain(self) -> None:
        await self._drain_begun.wait()

    @property
    def triggered(self) -> bool:
        return self._event.is_set()

    def trigger(self) -> None:
        self._drain_begun.set()
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

    @property
    def requests_in_flight(self) -> int:
        return self._requests_in_flight

    @contextmanager
    def in_flight(self) -> Iterator[None]:
        """Count one request in flight while the block runs (the drain waits for it)."""
        self._requests_in_flight += 1
        try:
            yield
        finally:
            self._requests_in_flight -= 1
            if not self._requests_in_flight:
                self._all_finished.set()
                self._all_finished = trio.Event()

    async def wait_until_none_in_flight(self) -> None:
        while self._requests_in_flight:
            await self._all_finished.wait()
