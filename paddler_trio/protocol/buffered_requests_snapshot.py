"""The balancer's count of requests waiting for a free slot."""

from __future__ import annotations

import attrs


@attrs.frozen
class BufferedRequestsSnapshot:
    """``{"buffered_requests_current": int}`` (``GET /api/v1/buffered_requests``)."""

    buffered_requests_current: int
