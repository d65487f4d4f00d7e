"""What a writer sends in one write: a message and whatever is already queued behind it.

The agent's link to the balancer (one frame per engine step) and the balancer's client
writers (an NDJSON chunk, a run of inference-socket messages) all take their messages
this way: many at once under load, one at a time when idle, and never waiting for more.
"""

from __future__ import annotations

from typing import Any

import trio

from paddler_trio.protocol import to_json


def queued_texts(first: Any, receive: trio.MemoryReceiveChannel[Any], limit: int) -> list[str]:
    """`first` and the messages already queued in `receive` (at most `limit` in all), as JSON."""
    texts = [to_json(first)]
    while len(texts) < limit:
        try:
            texts.append(to_json(receive.receive_nowait()))
        except (trio.WouldBlock, trio.EndOfChannel):
            break
    return texts
