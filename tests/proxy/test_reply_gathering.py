"""Gathering replies (`RequestForwarder.serve(gather=...)`, used by the NDJSON routes and the
inference socket): the first reply, the first after a quiet interval, and every reply of a slow
stream go on at once; once replies follow each other closely, the ones after wait out the
interval and go on together, in order, except the stream's end, which goes on when it comes.
Driven on Trio's mock clock."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from paddler_trio.protocol import ContentToken
from tests.proxy.test_forwarding import DONE, PARAMS, Setup, setup

GATHER = 0.002


def start_gathering(s: Setup, gather: float) -> None:
    async def run() -> None:
        await s.forwarder.serve("client-1", PARAMS, s.emit, gather=gather)

    s.nursery.start_soon(run)


async def finish_and_expect_the_slot_back(s: Setup, wire: Any, agent_request_id: str) -> None:
    """The agent sends Done: it reaches the client at once and the slot is free again."""
    wire.reply(agent_request_id, DONE)
    await trio.testing.wait_all_tasks_blocked()
    assert s.received[-1].response == DONE
    assert s.pool.slots_processing == 0


def texts(received: list[Any]) -> list[str]:
    return [m.response.text for m in received if isinstance(m.response, ContentToken)]


async def test_close_replies_wait_out_the_interval_and_go_on_together(mock_clock: trio.testing.MockClock) -> None:
    async with setup() as s:
        wire = s.add_agent("a")
        start_gathering(s, GATHER)
        agent_request_id = await wire.next_request_id()
        wire.reply(agent_request_id, ContentToken("first"))
        await trio.testing.wait_all_tasks_blocked()
        assert texts(s.received) == ["first"]

        # "second" follows closely: it goes on, and the stream is now gathered.
        wire.reply(agent_request_id, ContentToken("second"))
        await trio.testing.wait_all_tasks_blocked()
        assert texts(s.received) == ["first", "second"]
        wire.reply(agent_request_id, ContentToken("third"))
        wire.reply(agent_request_id, ContentToken("fourth"))
        await trio.testing.wait_all_tasks_blocked()
        assert texts(s.received) == ["first", "second"]

        mock_clock.jump(GATHER)
        await trio.testing.wait_all_tasks_blocked()
        assert texts(s.received) == ["first", "second", "third", "fourth"]

        mock_clock.jump(10 * GATHER)
        wire.reply(agent_request_id, ContentToken("after a pause"))
        await trio.testing.wait_all_tasks_blocked()
        assert texts(s.received)[-1] == "after a pause"

        await finish_and_expect_the_slot_back(s, wire, agent_request_id)


async def test_a_stream_slower_than_the_interval_is_never_held(mock_clock: trio.testing.MockClock) -> None:
    async with setup() as s:
        wire = s.add_agent("a")
        start_gathering(s, GATHER)
        agent_request_id = await wire.next_request_id()
        for index in range(5):
            wire.reply(agent_request_id, ContentToken(f"token {index}"))
            await trio.testing.wait_all_tasks_blocked()
            assert texts(s.received)[-1] == f"token {index}"
            mock_clock.jump(2 * GATHER)
        await finish_and_expect_the_slot_back(s, wire, agent_request_id)


async def test_without_gathering_every_reply_goes_on_at_once(mock_clock: trio.testing.MockClock) -> None:
    async with setup() as s:
        wire = s.add_agent("a")
        start_gathering(s, 0.0)
        agent_request_id = await wire.next_request_id()
        for text in ("first", "second", "third"):
            wire.reply(agent_request_id, ContentToken(text))
            await trio.testing.wait_all_tasks_blocked()
        assert texts(s.received) == ["first", "second", "third"]

        await finish_and_expect_the_slot_back(s, wire, agent_request_id)


async def test_a_client_leaving_during_the_interval_frees_the_slot_at_once(mock_clock: trio.testing.MockClock) -> None:
    async with setup() as s:
        wire = s.add_agent("a")
        client = trio.CancelScope()

        async def run() -> None:
            with client:
                await s.forwarder.serve("client-1", PARAMS, s.emit, gather=GATHER)

        s.nursery.start_soon(run)
        agent_request_id = await wire.next_request_id()
        for text in ("first", "second"):  # close together: the relay now waits out the interval
            wire.reply(agent_request_id, ContentToken(text))
            await trio.testing.wait_all_tasks_blocked()
        wire.reply(agent_request_id, ContentToken("third"))  # gathered
        await trio.testing.wait_all_tasks_blocked()
        client.cancel()  # the client leaves before the interval ends
        await trio.testing.wait_all_tasks_blocked()
        wire.reply(agent_request_id, DONE)
        await trio.testing.wait_all_tasks_blocked()
        assert texts(s.received) == ["first", "second"]
        assert all(message.response != DONE for message in s.received)
        assert s.pool.slots_processing == 0, "the agent's Done was kept: the slot needs no item timeout to come back"


async def test_the_end_of_a_gathered_stream_is_not_held_for_the_interval(mock_clock: trio.testing.MockClock) -> None:
    async with setup() as s:
        wire = s.add_agent("a")
        start_gathering(s, GATHER)
        agent_request_id = await wire.next_request_id()
        for text in ("first", "second"):  # close together: the relay now waits out the interval
            wire.reply(agent_request_id, ContentToken(text))
            await trio.testing.wait_all_tasks_blocked()
        wire.reply(agent_request_id, ContentToken("last"))
        wire.reply(agent_request_id, DONE)
        await trio.testing.wait_all_tasks_blocked()  # the clock stands still: the interval has not passed
        assert texts(s.received) == ["first", "second", "last"]
        assert s.received[-1].response == DONE
        assert s.pool.slots_processing == 0
