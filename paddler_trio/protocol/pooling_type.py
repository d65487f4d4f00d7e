"""How an embedding model pools token vectors into one vector."""

from __future__ import annotations

import enum


class PoolingType(enum.StrEnum):
    """Paddler's ``PoolingType``; the value is the wire string."""

    UNSPECIFIED = "Unspecified"
    NONE = "None"
    MEAN = "Mean"
    CLS = "Cls"
    LAST = "Last"
    RANK = "Rank"
