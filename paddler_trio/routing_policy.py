"""How the balancer picks the agent for a request (`paddler balancer --routing-policy`).

The rule itself lives in `proxy/agent_pool.py`; this value is apart so that the balancer's
configuration can name it without importing the request path.
"""

from __future__ import annotations

import enum


class RoutingPolicy(enum.StrEnum):
    # The agent most likely to hold the longest prefix of the request in its cache, within a
    # load margin of the least busy agent; Paddler's rule when no agent holds any of it.
    CACHE_AWARE = "cache-aware"
    # Paddler's rule: the lowest share of busy slots, ties in turn.
    LEAST_BUSY = "least-busy"
