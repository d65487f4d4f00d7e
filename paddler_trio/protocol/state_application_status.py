"""How far an agent got in applying the desired state it was sent."""

from __future__ import annotations

import enum


class StateApplicationStatus(enum.StrEnum):
    """Paddler's ``AgentStateApplicationStatus``; the value is the wire string."""

    APPLIED = "Applied"
    ATTEMPTED_AND_NOT_APPLIABLE = "AttemptedAndNotAppliable"
    ATTEMPTED_AND_RETRYING = "AttemptedAndRetrying"
    FRESH = "Fresh"
    STUCK = "Stuck"
