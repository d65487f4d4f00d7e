"""An agent serving several balancers refuses a request that finds every slot taken.

Each balancer counts only its own requests against an agent's slots, and learns of the others'
from the agent's status updates (`AgentStatus.snapshot(held_elsewhere=...)`). Two balancers can
still send a request for the same last slot before either hears of the other's: the agent then
answers the later one with this error instead of over-committing, and our balancer takes it as
"dispatch again" (to another agent, or into its buffer) without the client seeing it, as it does
for a request lost with its agent before the first token. Nothing else is ever sent with this
code and description, and no output precedes it.
"""

from __future__ import annotations

from paddler_trio.protocol.envelopes import ErrorDetails

SLOTS_TAKEN_CODE = 503
SLOTS_TAKEN_DESCRIPTION = "Every slot of this agent is taken (by another balancer's requests): dispatch it elsewhere"


def slots_taken_error() -> ErrorDetails:
    return ErrorDetails(code=SLOTS_TAKEN_CODE, description=SLOTS_TAKEN_DESCRIPTION)


def is_slots_taken(error: ErrorDetails) -> bool:
    return error.code == SLOTS_TAKEN_CODE and error.description == SLOTS_TAKEN_DESCRIPTION
