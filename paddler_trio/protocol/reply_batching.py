"""Several agent-to-balancer messages in one WebSocket frame: our extension of Paddler's agent socket.

Paddler sends one JSON message per frame, so the balancer pays the whole per-frame cost
(WebSocket parsing, the hand-over from the HTTP server to the socket's task, a task switch)
for every generated token. An agent whose engine step produced tokens for many slots can
send them together instead, as one frame holding a JSON array of those messages.

An agent does so only when the balancer offered it: our balancer answers the agent
socket's upgrade with `REPLY_BATCHING_HEADER`. A Paddler balancer never sends it, so our
agent speaks to it one message per frame; a Paddler agent never sends an array, and our
balancer reads its frames exactly as before.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

REPLY_BATCHING_HEADER = "x-paddler-trio-reply-batching"
REPLY_BATCHING_VERSION = "1"

# Messages one frame carries at most (a frame stays well under the balancer's message size limit).
MAX_MESSAGES_PER_FRAME = 256


def offers_reply_batching(handshake_headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether the balancer's upgrade response offers batched frames."""
    name = REPLY_BATCHING_HEADER.encode()
    return any(key.lower() == name and value.strip() == REPLY_BATCHING_VERSION.encode() for key, value in handshake_headers)


def batch_frame(messages: Sequence[str]) -> str:
    """One frame for JSON-encoded messages: a lone message goes as it is, several as an array."""
    if len(messages) == 1:
        return messages[0]
    return "[" + ",".join(messages) + "]"
