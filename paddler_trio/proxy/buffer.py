"""Requests waiting for a free slot: a queue with a size bound and a timeout.

Spec 6.2 plus "Where we go beyond Paddler", item 2: a request first tries to claim a slot
directly (only when nobody is waiting, so nobody jumps the queue); otherwise it joins the
queue, unless the queue is full (`BufferOverflow`, the 503 envelope). Every pool change
hands free slots to waiters, one slot each, so waiters never wake up to race for a slot (no
thundering herd). A waiter that times out (`BufferTimeout`, the 504 envelope) or whose task
is cancelled (its client left) leaves the queue at once. Each waiter keeps its request's
prefix chain and the kind of agent it needs (`agent_wants.py`), so that the slot handed to it
is chosen for that request; a waiter no free slot can serve (it needs the other kind) is passed
over, so it never holds up those behind it.

Who gets a freed slot: under `least-busy`, the oldest waiter (strict FIFO, Paddler's rule).
Under `cache-aware` (docs/architecture.md, "Cache-aware routing"), the oldest of the first
`CACHE_SCAN_LIMIT` waiters whose prefix an agent with a free slot holds (by the pool's rule,
`AgentPool.cached_characters`, so its claim lands on a holder), else the oldest waiter; but
once the oldest waiter has waited `cache_wait_limit`, waiters are served strictly FIFO again.
So cache routing overtakes a waiter only while it is younger than that limit.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter, OrderedDict

import attrs
import trio

from paddler_trio.proxy.agent_pool import AgentPool, SlotClaim
from paddler_trio.proxy.agent_wants import ENGINE_AGENT, AgentWants
from paddler_trio.proxy.prefix_chain import NO_PREFIX, PrefixChain

_logger = logging.getLogger(__name__)


# How long a waiter may be overtaken by younger waiters whose prompt is cached on an agent with
# a free slot; past it, it is served in FIFO order. A cache miss costs a prefill of the whole
# conversation (seconds on a CPU agent), while under saturation a waiter's queue time is about
# one request's duration (a few seconds): a limit below that would restore FIFO for nearly
# every hand-out and win nothing. 8 s covers a couple of turns of a busy CPU agent. The buffer
# caps it at half of `buffered_request_timeout`, so an overtaken waiter still gets at least
# half its timeout at the head of the FIFO order.
CACHE_WAIT_LIMIT = 8.0

# How many waiters, oldest first, a hand-out inspects for a cached prefix: keeps each hand-out
# O(CACHE_SCAN_LIMIT x agents) however long the queue is.
CACHE_SCAN_LIMIT = 64


class BufferOverflow(Exception):
    """The queue already holds `max_buffered_requests` waiters (or buffering is off)."""


class BufferTimeout(Exception):
    """No slot was handed to the waiter within `buffered_request_timeout`."""


@attrs.define(eq=False)
class _Waiter:
    prefix: PrefixChain
    wants: AgentWants
    since: float
    handed: trio.Event = attrs.field(factory=trio.Event)
    claim: SlotClaim | None = None


class RequestBuffer:
    def __init__(self, pool: AgentPool, *, max_buffered_requests: int, buffered_request_timeout: float) -> None:
        self._pool = pool
        self._max = max_buffered_requests
        self._timeout = buffered_request_timeout
        self._cache_wait_limit = min(CACHE_WAIT_LIMIT, buffered_request_timeout / 2)
        self._waiters: OrderedDict[int, _Waiter] = OrderedDict()
        # How many waiters want each kind of agent (no entry: none).
        self._wanted: Counter[AgentWants] = Counter()
        self._next_ticket = 0
        self._handing_out = False
        self._changed = trio.Event()
        self.version = 0
        pool.add_listener(self._hand_out_free_slots)

    def close(self) -> None:
        self._pool.remove_listener(self._hand_out_free_slots)

    @property
    def current(self) -> int:
        """How many requests are waiting now."""
        return len(self._waiters)

    async def wait_for_an_agent(self, timeout: float) -> bool:
        """Whether an agent is registered, waiting up to `timeout` seconds for one to join."""
        return await self._pool.wait_for_an_agent(timeout)

    @property
    def routes_by_prefix(self) -> bool:
        """Whether claims use the request's prefix chain (else it need not be computed)."""
        return self._pool.routes_by_prefix

    async def claim(self, prefix: PrefixChain = NO_PREFIX, wants: AgentWants = ENGINE_AGENT) -> SlotClaim:
        """A slot for one request whose prompt has `prefix` on an agent of `wants`; waits in line
        when none is free."""
        if not self._wanted[wants]:
            claim = self._pool.try_claim(wants, prefix=prefix)
            if claim is not None:
                return claim
        if len(self._waiters) >= self._max:
            raise BufferOverflow
        ticket = self._next_ticket
        self._next_ticket += 1
        waiter = _Waiter(prefix, wants, trio.current_time())
        self._waiters[ticket] = waiter
        self._wanted[wants] += 1
        self._count_changed()
        try:
            with trio.move_on_after(self._timeout):
                await waiter.handed.wait()
            claim, waiter.claim = waiter.claim, None
            if claim is None:
                raise BufferTimeout
            return claim
        finally:
            if self._waiters.pop(ticket, None) is not None:
                self._forget_wants(waiter)
                self._count_changed()
            if waiter.claim is not None:
                # Handed a slot in the same instant the waiter was cancelled: pass it on.
                waiter.claim.forget_prefix()
                waiter.claim.release()

    def _hand_out_free_slots(self) -> None:
        # Pool listener: also called from inside try_claim/release below; one pass at a time.
        if self._handing_out:
            return
        self._handing_out = True
        try:
            while (ticket := self._next_to_serve()) is not None:
                waiter = self._waiters[ticket]
                claim = self._pool.try_claim(waiter.wants, prefix=waiter.prefix)
                if claim is None:
                    break
                del self._waiters[ticket]
                self._forget_wants(waiter)
                waiter.claim = claim
                waiter.handed.set()
                self._count_changed()
        finally:
            self._handing_out = False

    def _next_to_serve(self) -> int | None:
        """The ticket of the waiter the next free slot goes to (the module docstring's rule), or
        None when no waiter can be served now."""
        servable = {wants for wants in self._wanted if self._pool.can_claim(wants)}
        if not servable:
            return None
        oldest_ticket, oldest = next((ticket, waiter) for ticket, waiter in self._waiters.items() if waiter.wants in servable)
        if not self._pool.routes_by_prefix or trio.current_time() - oldest.since >= self._cache_wait_limit:
            return oldest_ticket
        for ticket, waiter in itertools.islice(self._waiters.items(), CACHE_SCAN_LIMIT):
            if waiter.wants in servable and self._pool.cached_characters(waiter.prefix, waiter.wants) > 0:
                return ticket
        return oldest_ticket

    def _forget_wants(self, waiter: _Waiter) -> None:
        self._wanted[waiter.wants] -= 1
        if not self._wanted[waiter.wants]:
            del self._wanted[waiter.wants]

    def _count_changed(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self, seen_version: int) -> int:
        """Return once the waiting count changed after `seen_version` (for SSE streams)."""
        while self.version == seen_version:
            await self._changed.wait()
        return self.version
