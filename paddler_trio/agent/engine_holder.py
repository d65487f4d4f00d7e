"""The engine the agent serves requests with right now.

Reconciliation publishes an engine once it is loaded and withdraws it before closing it;
request handling reads it when a request arrives. Between the start of a swap (the drain
before unloading) and the end of the load that follows, a request that finds no engine
waits for the new one instead of failing: the balancer may have sent it just before it
learnt that this agent was reloading.
"""

from __future__ import annotations

import attrs
import trio

from paddler_trio.engine.engine import Engine


@attrs.define
class EngineHolder:
    engine: Engine | None = None
    swapping: bool = False
    _changed: trio.Event = attrs.field(factory=trio.Event)

    def begin_swap(self) -> None:
        self.swapping = True

    def end_swap(self) -> None:
        """The load that a swap led to is over, loaded or not: waiters stop waiting."""
        self.swapping = False
        self._notify()

    def publish(self, engine: Engine) -> None:
        self.engine = engine
        self.swapping = False
        self._notify()

    def withdraw(self) -> None:
        self.engine = None
        self._notify()

    async def wait_for_engine(self, timeout: float) -> Engine | None:
        """The engine; during a swap, the next one (None if the load fails or takes longer than `timeout`)."""
        with trio.move_on_after(timeout):
            while self.engine is None and self.swapping:
                await self._changed.wait()
        return self.engine

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
