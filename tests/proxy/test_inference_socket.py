"""The multiplexed inference WebSocket (spec 2.7) against the real balancer and scripted fake agents."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import attrs
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from paddler_trio.protocol import BalancerDesiredState, InferenceParameters, to_json
from tests.proxy.balancer_harness import BalancerUnderTest, running_balancer, wait_until
from tests.proxy.scripted_paced_agent import ScriptedPacedAgent


def request(request_id: str, prompt: str = "Hi", max_tokens: int = 8) -> str:
    return json.dumps(
        {"Request": {"id": request_id, "request": {"ContinueFromRawPrompt": {"raw_prompt": prompt, "max_tokens": max_tokens}}}}
    )


def stop(request_id: str) -> str:
    return json.dumps({"Notification": {"StopRespondingTo": request_id}})


async def receive(ws: WebSocketConnection) -> dict[str, Any]:
    with trio.fail_after(5):
        return json.loads(await ws.get_message())


async def receive_until_done(ws: WebSocketConnection, request_ids: set[str]) -> dict[str, list[dict[str, Any]]]:
    """Every message for each id until that id's terminal message (Done or Error)."""
    collected: dict[str, list[dict[str, Any]]] = defaultdict(list)
    pending = set(request_ids)
    while pending:
        message = await receive(ws)
        envelope = message.get("Response") or message.get("Error")
        assert envelope is not None, message
        collected[envelope["request_id"]].append(message)
        if "Error" in message or "Done" in envelope["response"].get("GeneratedToken", {}):
            pending.discard(envelope["request_id"])
    return collected


async def set_embeddings_mode(balancer: BalancerUnderTest, enabled: bool) -> None:
    state = attrs.evolve(BalancerDesiredState.default(), inference_parameters=InferenceParameters(enable_embeddings=enabled))
    response = await balancer.http.put(f"{balancer.management}/api/v1/balancer_desired_state", content=to_json(state))
    assert response.status_code == 204


async def test_requests_are_multiplexed_on_one_socket() -> None:
    async with running_balancer() as balancer:
        await balancer.add_agent(name="gpu-1", slots=2, token_delay=0.02)
        async with open_websocket_url(balancer.inference_socket_url) as ws:
            await ws.send_message(request("one"))
            await ws.send_message(request("two"))
            streams = await receive_until_done(ws, {"one", "two"})
        for messages in streams.values():
            tokens = [m["Response"]["response"]["GeneratedToken"] for m in messages]
            assert [token.get("ContentToken") for token in tokens[:-1]] == ["Hello", ",", " world"]
            assert "Done" in tokens[-1]
            assert {m["Response"]["generated_by"] for m in messages} == {"gpu-1"}


async def test_a_duplicate_in_flight_id_is_refused_and_the_original_goes_on() -> None:
    async with running_balancer() as balancer:
        await balancer.add_agent(token_delay=0.1)
        async with open_websocket_url(balancer.inference_socket_url) as ws:
            await ws.send_message(request("same"))
            await ws.send_message(request("same"))
            first = await receive(ws)
            assert first == {
                "Error": {
                    "request_id": "same",
                    "error": {"code": 400, "description": 'Request id "same" is already in flight on this connection'},
                }
            }
            rest = await receive_until_done(ws, {"same"})
            assert "Done" in rest["same"][-1]["Response"]["response"]["GeneratedToken"]
            # Once it ended, the id may be used again.
            await ws.send_message(request("same"))
            again = await receive_until_done(ws, {"same"})
            assert "Response" in again["same"][0]


async def test_stop_responding_to_cancels_one_request_only() -> None:
    async with running_balancer() as balancer:
        agent = await balancer.add_agent(slots=2, tokens=tuple("abcdefghijklmnop"), token_delay=0.05)
        async with open_websocket_url(balancer.inference_socket_url) as ws:
            await ws.send_message(request("cancelled"))
            await ws.send_message(request("sibling"))
            await wait_until(lambda: len(agent.active) == 2)
            await ws.send_message(stop("cancelled"))
            await wait_until(lambda: len(agent.stops) == 1)
            streams = await receive_until_done(ws, {"sibling"})
            assert len(streams["sibling"]) == 17
            # Nothing for the cancelled request arrives after its stop was processed.
            assert all("Done" not in m["Response"]["response"]["GeneratedToken"] for m in streams["cancelled"])
        await wait_until(lambda: not agent.active)
        assert await balancer.slots_processing() == 0


async def test_stop_responding_to_releases_a_buffered_request() -> None:
    async with running_balancer(buffered_request_timeout=30.0) as balancer:
        async with open_websocket_url(balancer.inference_socket_url) as ws:
            await ws.send_message(request("waiting"))
            await wait_until(balancer.buffered)
            await ws.send_message(stop("waiting"))
            await wait_until(lambda: _buffered(balancer, 0))


async def _buffered(balancer: BalancerUnderTest, count: int) -> bool:
    return await balancer.buffered() == count


async def test_closing_the_socket_cancels_its_requests() -> None:
    async with running_balancer() as balancer:
        agent = await balancer.add_agent(slots=2, tokens=tuple("abcdefghijklmnop"), token_delay=0.05)
        async with open_websocket_url(balancer.inference_socket_url) as ws:
            await ws.send_message(request("a"))
            await ws.send_message(request("b"))
            await wait_until(lambda: len(agent.active) == 2)
        await wait_until(lambda: len(agent.stops) == 2)
        await wait_until(lambda: not agent.active)
        await wait_until(lambda: _slots_zero(balancer))


async def _slots_zero(balancer: BalancerUnderTest) -> bool:
    return await balancer.slots_processing() == 0


async def test_unparseable_messages_are_answered_not_dropped() -> None:
    async with running_balancer() as balancer:
        async with open_websocket_url(balancer.inference_socket_url) as ws:
            await ws.send_message(
                json.dumps({"Request": {"id": "typo", "request": {"ContinueFromRawPrompt": {"raw_prompt": "x"}}}})
            )
            answer = await receive(ws)
            assert answer["Error"]["request_id"] == "typo"
            assert answer["Error"]["error"]["code"] == 400
            assert 'missing field "max_tokens"' in answer["Error"]["error"]["description"]
            await ws.send_message("this is not JSON")
            answer = await receive(ws)
            assert answer["Error"]["request_id"] == ""
            assert "invalid JSON" in answer["Error"]["error"]["description"]
            await ws.send_message(request("negative", max_tokens=-5))
            answer = await receive(ws)
            assert answer["Error"]["error"] == {
                "code": 400,
                "description": "Invalid request parameters: max_tokens must not be negative (got -5)",
            }


async def test_token_generation_mode_is_announced_and_enforced() -> None:
    async with running_balancer() as balancer:
        await set_embeddings_mode(balancer, True)
        async with open_websocket_url(balancer.inference_socket_url) as ws:
            assert await receive(ws) == {"Notification": "TokenGenerationDisabled"}
            await ws.send_message(request("refused"))
            assert await receive(ws) == {
                "Response": {
                    "generated_by": None,
                    "request_id": "refused",
                    "response": {
                        "GeneratedToken": {
                            "TokenGenerationDisabled": "Token generation is disabled while the cluster is configured for embeddings"
                        }
                    },
                }
            }
            await set_embeddings_mode(balancer, False)
            assert await receive(ws) == {"Notification": "TokenGenerationEnabled"}
            await set_embeddings_mode(balancer, True)
            assert await receive(ws) == {"Notification": "TokenGenerationDisabled"}


async def test_shutdown_answers_503_and_closes_with_1001() -> None:
    async with running_balancer() as balancer:
        await balancer.add_agent(tokens=tuple("abcdefghijklmnop"), token_delay=0.1)
        async with open_websocket_url(balancer.inference_socket_url) as ws:
            await ws.send_message(request("streaming"))
            await ws.send_message(request("waiting"))
            first = await receive(ws)
            assert first["Response"]["request_id"] == "streaming"
            balancer.shutdown.trigger()
            errors = []
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    message = await receive(ws)
                    if "Error" in message:
                        errors.append((message["Error"]["request_id"], message["Error"]["error"]["code"]))
            assert closed.value.reason.code == 1001
            assert sorted(errors) == [("streaming", 503), ("waiting", 503)]


async def test_clients_closing_mid_stream_never_cost_the_agent_its_connection() -> None:
    """Tokens go from the agent socket's reader straight to client sockets; a client whose close
    has just been read must make that hand-off decline. It once raised into the reader, which
    took it for the agent's own disconnect: the agent left, failing every request on it."""
    async with running_balancer() as balancer:
        agent = ScriptedPacedAgent(
            balancer.addresses.management, slots=8, tokens=2000, first_token_delay=0.0, token_interval=0.001
        )
        await balancer.nursery.start(agent.run)
        await wait_until(lambda: balancer.lists(agent.agent_id))

        async def stream_then_close(client: int) -> None:
            for round_number in range(10):
                async with open_websocket_url(balancer.inference_socket_url) as ws:
                    await ws.send_message(request(f"c{client}-r{round_number}", max_tokens=2000))
                    for _ in range(3):  # streaming: then the client closes mid-stream
                        await receive(ws)

        async with trio.open_nursery() as clients:
            for client in range(8):
                clients.start_soon(stream_then_close, client)
        await wait_until(lambda: _slots_zero(balancer))
        assert [listed["id"] for listed in await balancer.agents()] == [agent.agent_id]
        async with open_websocket_url(balancer.inference_socket_url) as ws:
            await ws.send_message(request("after", max_tokens=2000))
            replies = (await receive_until_done(ws, {"after"}))["after"]
        assert "Error" not in replies[-1], replies[-1]
