"""What a writer sends in one write: a message and whatever is already queued behind it.

The agent's link to the balancer (one frame per engine step) and the balancer's client
writers (an NDJSON chunk, a run of inference-socket messages) all take their messages
this way: many at once under load, one at a time when idle, and never waiting for more.
Producers put messages in with `put_into`, which waits only when the queue is full.
`send_now_into` puts one in without ever waiting (the agent socket's reader handing a token on,
an engine step's hand-off); `drainer_is_idle` tells whether the task that drains a channel waits
on an empty one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

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


def drainer_is_idle(channel: trio.MemoryReceiveChannel[Any] | trio.MemorySendChannel[Any]) -> bool:
    """Whether the task that drains `channel` (a writer, an engine stream's reader) waits for
    its next message with nothing queued: a message handed on past the channel then overtakes nothing."""
    queue = channel.statistics()
    return not queue.current_buffer_used and queue.tasks_waiting_receive > 0


T = TypeVar("T")


def put_into(send: trio.MemorySendChannel[T]) -> Callable[[T], Awaitable[None]]:
    """A send into `send` that waits only when the channel is full: no checkpoint per message, so
    the producers woken together (one engine step's requests, one agent frame's relays) all
    queue theirs before the writer runs."""

    async def put(message: T) -> None:
        try:
            send.send_nowait(message)
        except trio.WouldBlock:
            await send.send(message)

    return put


def send_now_into(send: trio.MemorySendChannel[T]) -> Callable[[T], bool]:
    """A send into `send` that never waits: False when the channel is full or closed."""

    def send_now(message: T) -> bool:
        try:
            send.send_nowait(message)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    return send_now
