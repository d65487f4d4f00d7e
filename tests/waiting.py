"""Waiting for a condition in a Trio test: poll it until it holds, fail after a deadline.

Threads and processes outside Trio use `tests.integration.cluster.wait_until` instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

WAIT_LIMIT = 10.0


async def wait_until(condition: Callable[[], Any], limit: float = WAIT_LIMIT, interval: float = 0.02) -> None:
    """Poll `condition` (sync or async) until it is truthy; fail after `limit` seconds."""
    with trio.fail_after(limit):
        while True:
            result = condition()
            if hasattr(result, "__await__"):
                result = await result
            if result:
                return
            await trio.sleep(interval)
