"""Cancel one request: ``{"Notification": {"StopRespondingTo": "<request id>"}}``.

Sent by an inference-socket client to the balancer, and by the balancer to the agent serving it.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class StopRespondingToNotification:
    """Stop generating for ``request_id`` and end its stream."""

    request_id: str
