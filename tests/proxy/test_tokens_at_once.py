"""Tokens handed to the client at once (`RequestForwarder.serve(emit_now=...)`): while the relay
waits with nothing queued, a token goes to `emit_now` from inside `deliver` (the agent socket's
reader), before any other task runs; anything else, and anything that would overtake a reply
still on its way, goes through the route and `emit`, in order. Counting, the item timeout and
re-dispatch treat both paths alike."""

from __future__ import annotations

from typing import Any

import attrs
import trio
import trio.testing

from paddler_trio.protocol import ContentToken
from paddler_trio.proxy.forwarding import item_timeout_description
from tests.proxy.test_forwarding import DONE, PARAMS, Setup, Wire, errors, setup


@attrs.define
class Client:
    """Records what reaches it at once (`now`) and through `emit` (`Setup.received`), in one list."""

    setup: Setup
    accepting: bool = True
    now: list[Any] = attrs.field(factory=list)
    both: list[tuple[str, Any]] = attrs.field(factory=list)

    def emit_now(self, message: Any) -> bool:
        if not self.accepting:
            return False
        self.now.append(message)
        self.both.append(("now", message))
        return True

    async def emit(self, message: Any) -> None:
        self.setup.received.append(message)
        self.both.append(("emit", message))

    def start(self, gather: float = 0.0) -> None:
        async def run() -> None:
            await self.setup.forwarder.serve("client-1", PARAMS, self.emit, gather=gather, emit_now=self.emit_now)

        self.setup.nursery.start_soon(run)

    def texts(self) -> list[tuple[str, str]]:
        return [
            (path, m.response.text)
            for path, m in self.both
            if isinstance(getattr(m, "response", None), ContentToken)
        ]


async def started(s: Setup, agent_name: str = "a", **start: Any) -> tuple[Wire, Client, str]:
    """An agent, a client whose request is dispatched to it, and the request's id on the agent,
    once the relay waits for the first reply."""
    wire = s.add_agent(agent_name)
    client = Client(s)
    client.start(**start)
    agent_request_id = await wire.next_request_id()
    await trio.testing.wait_all_tasks_blocked()
    return wire, client, agent_request_id


async def test_tokens_go_at_once_from_deliver_and_done_goes_through_the_relay() -> None:
    async with setup() as s:
        wire, client, agent_request_id = await started(s, "agent-a")

        wire.reply(agent_request_id, ContentToken("a"))
        # No checkpoint since `deliver`: the token is with the client already.
        assert [(m.generated_by, m.request_id, m.response) for m in client.now] == [
            ("agent-a", "client-1", ContentToken("a"))
        ]
        wire.reply(agent_request_id, ContentToken("b"))
        wire.reply(agent_request_id, DONE)
        await trio.testing.wait_all_tasks_blocked()

        assert client.texts() == [("now", "a"), ("now", "b")]
        assert [m.response for m in s.received] == [DONE]
        assert wire.agent.generated_tokens == 2
        assert s.pool.slots_processing == 0


async def test_a_token_never_overtakes_one_still_on_its_way_through_the_relay() -> None:
    async with setup() as s:
        wire, client, agent_request_id = await started(s, "a")
        client.accepting = False

        wire.reply(agent_request_id, ContentToken("first"))  # the client's writer is busy: through the route
        client.accepting = True
        wire.reply(agent_request_id, ContentToken("second"))  # the relay still holds "first": through the route too
        await trio.testing.wait_all_tasks_blocked()
        assert client.texts() == [("emit", "first"), ("emit", "second")]

        wire.reply(agent_request_id, ContentToken("third"))  # the relay has caught up and waits again
        wire.reply(agent_request_id, DONE)
        await trio.testing.wait_all_tasks_blocked()
        assert client.texts() == [("emit", "first"), ("emit", "second"), ("now", "third")]
        assert wire.agent.generated_tokens == 3
        assert s.pool.slots_processing == 0


async def test_a_gathered_stream_goes_through_the_relay(mock_clock: trio.testing.MockClock) -> None:
    gather = 0.002
    async with setup() as s:
        wire, client, agent_request_id = await started(s, "a", gather=gather)

        wire.reply(agent_request_id, ContentToken("first"))
        wire.reply(agent_request_id, ContentToken("close behind"))  # within the interval: gathered
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(10 * gather)
        await trio.testing.wait_all_tasks_blocked()
        wire.reply(agent_request_id, ContentToken("after a pause"))
        wire.reply(agent_request_id, DONE)
        await trio.testing.wait_all_tasks_blocked()

        assert client.texts() == [("now", "first"), ("emit", "close behind"), ("now", "after a pause")]
        assert s.pool.slots_processing == 0


async def test_the_item_timeout_counts_from_the_last_token_handed_on_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with setup(item_timeout=1.0) as s:
        wire = s.add_agent("a")
        client = Client(s)
        client.start()
        agent_request_id = await wire.next_request_id()
        for text in "abc":
            await trio.sleep(0.6)  # each token within the timeout of the one before
            wire.reply(agent_request_id, ContentToken(text))
        assert not errors(s.received)
        await trio.sleep(1.5)  # past the timeout after the last token
        assert [(path, m.response.text) for path, m in client.both if path == "now"] == [
            ("now", "a"),
            ("now", "b"),
            ("now", "c"),
        ]
        assert errors(s.received) == [(504, item_timeout_description(1.0))]


async def test_an_agent_lost_after_a_token_went_at_once_is_a_502_not_a_second_dispatch() -> None:
    async with setup() as s:
        first, client, agent_request_id = await started(s, "first")
        second = s.add_agent("second")

        first.reply(agent_request_id, ContentToken("a"))
        s.pool.deregister(first.agent)
        await trio.testing.wait_all_tasks_blocked()

        assert client.texts() == [("now", "a")]
        assert errors(s.received) == [(502, "Agent controller connection closed")]
        assert second.outbox.statistics().current_buffer_used == 0
        assert s.pool.slots_processing == 0


async def test_a_client_that_leaves_gets_nothing_more_at_once_and_the_slot_drains() -> None:
    async with setup() as s:
        wire = s.add_agent("a")
        scope = trio.CancelScope()
        client = Client(s)

        async def run() -> None:
            with scope:
                await s.forwarder.serve("client-1", PARAMS, client.emit, emit_now=client.emit_now)

        s.nursery.start_soon(run)
        agent_request_id = await wire.next_request_id()
        await trio.testing.wait_all_tasks_blocked()
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()

        wire.reply(agent_request_id, ContentToken("late"))
        wire.reply(agent_request_id, DONE)
        await trio.testing.wait_all_tasks_blocked()
        assert client.both == []
        assert s.pool.slots_processing == 0
