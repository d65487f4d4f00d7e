"""Dispatch across agents, client disconnects and agent faults, end to end through the real balancer."""

from __future__ import annotations

import socket
from collections import Counter

import trio

from tests.proxy.balancer_harness import content_of, errors_of, running_balancer, wait_until

RAW = "/api/v1/continue_from_raw_prompt"
REQUEST = b'{"raw_prompt": "Hi", "max_tokens": 8}'


def _raw_post(address: str) -> socket.socket:
    host, port = address.rsplit(":", 1)
    client = socket.create_connection((host, int(port)))
    client.sendall(
        b"POST " + RAW.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(REQUEST)).encode() + b"\r\n\r\n" + REQUEST
    )
    return client


async def test_two_agents_with_two_slots_share_a_burst_of_four() -> None:
    async with running_balancer() as balancer:
        agents = [await balancer.add_agent(name=name, slots=2, token_delay=0.1) for name in ("a", "b")]
        results: list[list[dict]] = []

        async def one() -> None:
            results.append(await balancer.raw_prompt())

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(one)
        served_by = Counter(messages[0]["Response"]["generated_by"] for messages in results)
        assert served_by == {"a": 2, "b": 2}
        assert [agent.max_active for agent in agents] == [2, 2]


async def test_four_single_slot_agents_serve_a_burst_of_four_each_once() -> None:
    async with running_balancer() as balancer:
        for index in range(4):
            await balancer.add_agent(name=f"agent-{index}", token_delay=0.1)
        results: list[list[dict]] = []

        async def one() -> None:
            results.append(await balancer.raw_prompt())

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(one)
        assert {messages[0]["Response"]["generated_by"] for messages in results} == {f"agent-{i}" for i in range(4)}


async def test_client_disconnect_while_streaming_stops_the_agent_and_frees_the_slot() -> None:
    async with running_balancer() as balancer:
        agent = await balancer.add_agent(tokens=tuple("abcdefghij"), token_delay=0.2)
        client = _raw_post(balancer.addresses.inference)
        await wait_until(lambda: agent.active)
        await wait_until(balancer.slots_processing)
        client.close()
        await wait_until(lambda: agent.stops)
        await wait_until(lambda: not agent.active)
        await wait_until(lambda: _slots_back_to_zero(balancer))
        assert len(agent.finished) == 1


async def _slots_back_to_zero(balancer) -> bool:  # type: ignore[no-untyped-def]
    return await balancer.slots_processing() == 0


async def test_half_closed_client_leaves_the_buffer_at_once() -> None:
    async with running_balancer(buffered_request_timeout=30.0) as balancer:
        client = _raw_post(balancer.addresses.inference)
        await wait_until(balancer.buffered)
        started = trio.current_time()
        client.shutdown(socket.SHUT_WR)
        await wait_until(lambda: _buffered_is_zero(balancer), limit=2.0)
        assert trio.current_time() - started < 1.0
        client.close()
        # The place it held is free: a new request is served by an agent that joins now.
        await balancer.add_agent(name="late")
        assert content_of(await balancer.raw_prompt()) == "Hello, world"


async def _buffered_is_zero(balancer) -> bool:  # type: ignore[no-untyped-def]
    return await balancer.buffered() == 0


async def test_agent_dropped_mid_stream_ends_the_request_with_502() -> None:
    async with running_balancer() as balancer:
        agent = await balancer.add_agent(name="doomed", tokens=tuple("abcdefghij"), token_delay=0.1)
        messages: list[dict] = []

        async def request() -> None:
            await balancer.raw_prompt(messages=messages)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(request)
            await wait_until(lambda: len(agent.requests) == 1 and agent.active)
            # Would hold a request forever: it must not get the one that already produced output.
            survivor = await balancer.add_agent(name="survivor", frozen=True)
            await wait_until(lambda: content_of(messages))  # some tokens are out
            await agent.drop()
        assert content_of(messages)
        assert errors_of(messages) == [(502, "Agent controller connection closed")]
        agents = await balancer.agents()
        assert [entry["name"] for entry in agents] == ["survivor"]
        assert agents[0]["slots_processing"] == 0
        assert survivor.requests == []


async def test_request_without_output_is_dispatched_again_when_its_agent_drops() -> None:
    async with running_balancer() as balancer:
        frozen = await balancer.add_agent(name="frozen", frozen=True)
        messages: list[dict] = []

        async def request() -> None:
            messages.extend(await balancer.raw_prompt())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(request)
            await wait_until(lambda: frozen.requests)
            healthy = await balancer.add_agent(name="healthy")
            await frozen.drop()
        assert errors_of(messages) == []
        assert content_of(messages) == "Hello, world"
        assert {m["Response"]["generated_by"] for m in messages} == {"healthy"}
        assert len(healthy.requests) == 1
        assert await balancer.slots_processing() == 0


async def test_frozen_agent_answers_504_after_the_item_timeout() -> None:
    async with running_balancer(inference_item_timeout=0.3) as balancer:
        agent = await balancer.add_agent(frozen=True)
        messages = await balancer.raw_prompt()
        assert errors_of(messages) == [
            (
                504,
                "Inference timed out after 300ms waiting for next token. "
                "Increase --inference-item-timeout if the prompt requires longer processing.",
            )
        ]
        await wait_until(lambda: agent.stops == [agent.requests[0].id])
        # The frozen agent never confirms: the slot is released after a second item timeout.
        await wait_until(lambda: _slots_back_to_zero(balancer))


async def test_zero_item_timeout_answers_504_at_once() -> None:
    async with running_balancer(inference_item_timeout=0.0) as balancer:
        await balancer.add_agent(token_delay=0.05)
        messages = await balancer.raw_prompt()
        assert errors_of(messages)[0][0] == 504
