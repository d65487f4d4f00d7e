"""How an embedding batch is split across agents (spec 2.6, Paddler's `chunk_evenly_with_cap`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def chunk_evenly_with_cap(items: Sequence[T], *, agent_count: int, cap: int) -> list[list[T]]:
    """`min(len, max(agent_count, ceil(len / cap)))` chunks, order kept, sizes differing by at most one
    (the first `len % chunks` chunks get the extra item)."""
    if not items:
        return []
    chunks = min(len(items), max(agent_count, math.ceil(len(items) / cap)))
    size, extra = divmod(len(items), chunks)
    result: list[list[T]] = []
    start = 0
    for index in range(chunks):
        end = start + size + (1 if index < extra else 0)
        result.append(list(items[start:end]))
        start = end
    return result
