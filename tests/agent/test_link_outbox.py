"""`LinkOutbox`: what the agent sends on its link, as a balancer (a real trio-websocket server on
a loopback port) sees it. Every message waits in the outbox's queue; the writer task sends the
replies queued during one engine hand-off as one frame when reply batching is on, one message
per frame otherwise; leaving sends what is queued, then `DeregisterAgent`, then closes with 1000."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, WebSocketRequest, open_websocket, serve_websocket

from paddler_trio.agent.management_link import OUTBOUND_QUEUE_SIZE, LinkOutbox
from paddler_trio.protocol import BalancerBoundMessage, DeregisterAgentNotification, ResponseEnvelope, to_json
from paddler_trio.protocol.generated_token_result import ContentToken


@attrs.define
class SeenByTheBalancer:
    frames: list[Any] = attrs.field(factory=list)  # each frame, decoded
    close_code: int | None = None
    ended: trio.Event = attrs.field(factory=trio.Event)
    # How many frames had arrived each time the outbox said it had sent everything queued.
    all_sent_at: list[int] = attrs.field(factory=list)

    def note_all_sent(self) -> None:
        self.all_sent_at.append(len(self.frames))

    def messages(self) -> list[Any]:
        return [message for frame in self.frames for message in (frame if isinstance(frame, list) else [frame])]


async def record_the_link(seen: SeenByTheBalancer, request: WebSocketRequest) -> None:
    socket = await request.accept()
    try:
        while True:
            seen.frames.append(json.loads(await socket.get_message()))
    except ConnectionClosed as closed:
        seen.close_code = closed.reason.code if closed.reason is not None else None
    finally:
        seen.ended.set()


@asynccontextmanager
async def linked_outbox(*, batching: bool) -> AsyncIterator[tuple[LinkOutbox, SeenByTheBalancer]]:
    """An outbox on a real WebSocket to a balancer that records what arrives (and when the
    outbox says it has sent everything: `seen.all_sent_at`)."""
    seen = SeenByTheBalancer()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, partial(record_the_link, seen), "127.0.0.1", 0, None)
        async with open_websocket("127.0.0.1", server.port, "/api/v1/agent_socket/test", use_ssl=False) as socket:
            yield LinkOutbox(socket, batching=batching, on_sent=seen.note_all_sent), seen
        nursery.cancel_scope.cancel()


def token(request_id: str, text: str) -> ResponseEnvelope:
    return ResponseEnvelope(generated_by=None, request_id=request_id, response=ContentToken(text))


def wire(message: BalancerBoundMessage) -> Any:
    return json.loads(to_json(message))


async def leave(outbox: LinkOutbox, seen: SeenByTheBalancer) -> None:
    with trio.fail_after(5):
        await outbox.say_goodbye(close=True)
        await seen.ended.wait()


@pytest.mark.parametrize("batching", [True, False], ids=["batching", "one-per-frame"])
async def test_the_replies_of_one_hand_off_go_as_one_frame_only_with_batching(batching: bool) -> None:
    async with linked_outbox(batching=batching) as (outbox, seen):
        async with trio.open_nursery() as link:
            link.start_soon(outbox.write_queued, link.cancel_scope)
            await trio.testing.wait_all_tasks_blocked()
            with trio.testing.assert_no_checkpoints():  # as the scheduler hands a step's results on
                assert outbox.send_now(token("r-1", "Hello"))
                assert outbox.send_now(token("r-2", "Once"))
                assert outbox.send_now(token("r-3", "upon"))
            assert not outbox.all_sent()
            await trio.testing.wait_all_tasks_blocked()  # the writer has sent them and waits again
            assert outbox.all_sent()
            assert len(seen.all_sent_at) == 1  # said once, after the last of them (one frame or three)
            link.cancel_scope.cancel()
        await leave(outbox, seen)

    replies = [wire(token("r-1", "Hello")), wire(token("r-2", "Once")), wire(token("r-3", "upon"))]
    deregister = wire(DeregisterAgentNotification())
    assert seen.frames == ([replies, deregister] if batching else [*replies, deregister])
    assert seen.close_code == 1000


async def test_a_lone_reply_handed_to_the_waiting_writer_is_not_sent_until_written() -> None:
    """The engine's hand-off waits for `all_sent()` before the next step. A lone reply goes
    straight to the writer, which waits on an empty queue: the queue is empty at once, but the
    reply has not left yet, and the next step must not run beside its write."""
    async with linked_outbox(batching=True) as (outbox, seen):
        async with trio.open_nursery() as link:
            link.start_soon(outbox.write_queued, link.cancel_scope)
            await trio.testing.wait_all_tasks_blocked()
            assert outbox.send_now(token("r-1", "Hello"))
            assert not outbox.all_sent()
            await trio.testing.wait_all_tasks_blocked()
            assert outbox.all_sent()
            assert len(seen.all_sent_at) == 1
            link.cancel_scope.cancel()
        await leave(outbox, seen)


async def test_a_request_task_woken_by_the_same_hand_off_shares_the_frame() -> None:
    """The writer waits one scheduler round before sending a lone message: a request task that the
    hand-off woke (its result did not fit the engine's fast path) queues its reply in time."""
    async with linked_outbox(batching=True) as (outbox, seen):
        woken = trio.Event()

        async def request_task() -> None:
            await woken.wait()
            await outbox.put(token("r-2", "Once"))

        async with trio.open_nursery() as link:
            link.start_soon(outbox.write_queued, link.cancel_scope)
            link.start_soon(request_task)
            await trio.testing.wait_all_tasks_blocked()
            assert outbox.send_now(token("r-1", "Hello"))
            woken.set()
            await trio.testing.wait_all_tasks_blocked()
            link.cancel_scope.cancel()
        await leave(outbox, seen)

    assert seen.frames[0] == [wire(token("r-1", "Hello")), wire(token("r-2", "Once"))]


async def test_a_full_queue_refuses_the_hand_off_and_holds_back_request_tasks() -> None:
    async with linked_outbox(batching=True) as (outbox, seen):
        queued = [token(f"r-{index}", "x") for index in range(OUTBOUND_QUEUE_SIZE)]
        for message in queued:
            assert outbox.send_now(message)
        assert not outbox.send_now(token("r-refused", "x"))

        async with trio.open_nursery() as link:
            put_done = trio.Event()

            async def request_task() -> None:
                await outbox.put(token("r-late", "x"))
                put_done.set()

            link.start_soon(request_task)
            await trio.testing.wait_all_tasks_blocked()
            assert not put_done.is_set()  # back-pressure: the request task waits for room
            link.start_soon(outbox.write_queued, link.cancel_scope)
            await put_done.wait()
            await trio.testing.wait_all_tasks_blocked()
            link.cancel_scope.cancel()
        await leave(outbox, seen)

    expected = [wire(message) for message in [*queued, token("r-late", "x"), DeregisterAgentNotification()]]
    assert seen.messages() == expected


async def test_leaving_sends_what_is_queued_then_deregisters_and_closes_with_1000() -> None:
    async with linked_outbox(batching=True) as (outbox, seen):
        await outbox.put(token("r-1", "Hello"))
        assert outbox.send_now(token("r-1", "world"))
        await leave(outbox, seen)

    assert seen.frames == [wire(token("r-1", "Hello")), wire(token("r-1", "world")), wire(DeregisterAgentNotification())]
    assert seen.close_code == 1000


async def test_replies_the_writer_took_but_had_not_sent_when_the_agent_left_still_go_first() -> None:
    async with linked_outbox(batching=True) as (outbox, seen):
        async with trio.open_nursery() as link:
            link.start_soon(outbox.write_queued, link.cancel_scope)
            await trio.testing.wait_all_tasks_blocked()
            assert outbox.send_now(token("r-1", "Done"))  # wakes the writer with it
            link.cancel_scope.cancel()  # the agent leaves before the writer sends it
        await leave(outbox, seen)

    assert seen.frames == [wire(token("r-1", "Done")), wire(DeregisterAgentNotification())]
