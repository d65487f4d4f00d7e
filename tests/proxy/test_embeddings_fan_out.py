"""`POST /api/v1/generate_embedding_batch`: the mode checks and the fan-out of spec 2.6."""

from __future__ import annotations

from collections import Counter
from typing import Any

import attrs

from paddler_trio.protocol import BalancerDesiredState, InferenceParameters, to_json
from tests.proxy.balancer_harness import BalancerUnderTest, errors_of, running_balancer

EMBEDDINGS = "/api/v1/generate_embedding_batch"


def batch(count: int) -> dict[str, Any]:
    return {"input_batch": [{"id": f"doc-{i}", "content": "x" * i} for i in range(count)], "normalization_method": "L2"}


async def configure(balancer: BalancerUnderTest, **parameters: Any) -> None:
    state = attrs.evolve(BalancerDesiredState.default(), inference_parameters=InferenceParameters(**parameters))
    response = await balancer.http.put(f"{balancer.management}/api/v1/balancer_desired_state", content=to_json(state))
    assert response.status_code == 204


def embeddings_of(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        m["Response"]["response"]["Embedding"]["Embedding"]
        for m in messages
        if "Response" in m and isinstance(m["Response"]["response"].get("Embedding"), dict)
    ]


async def test_embeddings_are_refused_unless_enabled() -> None:
    async with running_balancer() as balancer:
        await balancer.add_agent()
        response = await balancer.http.post(f"{balancer.inference}{EMBEDDINGS}", json=batch(2))
        assert response.status_code == 501
        assert response.text == "Embedding generation is not enabled in the inference parameters"


async def test_embeddings_need_a_connected_agent() -> None:
    async with running_balancer() as balancer:
        await configure(balancer, enable_embeddings=True)
        response = await balancer.http.post(f"{balancer.inference}{EMBEDDINGS}", json=batch(2))
        assert response.status_code == 503
        assert response.text == "No agents are currently connected"


async def test_generation_is_refused_in_embeddings_mode() -> None:
    async with running_balancer() as balancer:
        await configure(balancer, enable_embeddings=True)
        response = await balancer.http.post(
            f"{balancer.inference}/api/v1/continue_from_raw_prompt", json={"raw_prompt": "x", "max_tokens": 2}
        )
        assert response.status_code == 501
        assert response.text == "Token generation is disabled while the cluster is configured for embeddings"
        # Before the parameters are checked, as in Paddler: a tool schema it would refuse.
        conversation = {
            "add_generation_prompt": True,
            "conversation_history": [{"role": "user", "content": "Hi"}],
            "enable_thinking": False,
            "max_tokens": 2,
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "f",
                        "description": "d",
                        "parameters": {"type": "object", "properties": {}, "required": ["missing"]},
                    },
                }
            ],
        }
        response = await balancer.http.post(
            f"{balancer.inference}/api/v1/continue_from_conversation_history", json=conversation
        )
        assert response.status_code == 501


async def test_a_batch_is_split_across_agents_and_ends_with_one_done() -> None:
    async with running_balancer() as balancer:
        await configure(balancer, enable_embeddings=True)
        agents = [await balancer.add_agent(name=name) for name in ("a", "b")]
        messages = await balancer.post_ndjson(EMBEDDINGS, batch(5))
        assert sorted(e["source_document_id"] for e in embeddings_of(messages)) == [f"doc-{i}" for i in range(5)]
        assert all(e["normalization_method"] == "L2" for e in embeddings_of(messages))
        assert sorted(len(agent.requests[0].request.input_batch) for agent in agents) == [2, 3]
        final = messages[-1]["Response"]
        assert final["response"] == {"Embedding": "Done"}
        assert final["generated_by"] is None
        chunk_ids = {m["Response"]["request_id"] for m in messages[:-1]}
        assert len(chunk_ids) == 2 and final["request_id"] not in chunk_ids
        assert sum(1 for m in messages if m["Response"]["response"] == {"Embedding": "Done"}) == 1


async def test_the_cap_makes_more_chunks_than_agents() -> None:
    async with running_balancer() as balancer:
        await configure(balancer, enable_embeddings=True, embedding_batch_size=2)
        agent = await balancer.add_agent()
        messages = await balancer.post_ndjson(EMBEDDINGS, batch(5))
        assert len(embeddings_of(messages)) == 5
        assert Counter(len(envelope.request.input_batch) for envelope in agent.requests) == {2: 2, 1: 1}
        assert agent.max_active == 1


async def test_chunk_errors_appear_in_the_stream_and_done_still_ends_it() -> None:
    async with running_balancer(max_buffered_requests=0) as balancer:
        await configure(balancer, enable_embeddings=True, embedding_batch_size=1)
        await balancer.add_agent(token_delay=0.2)
        messages = await balancer.post_ndjson(EMBEDDINGS, batch(3))
        assert errors_of(messages) == [(503, "Buffered requests overflow")] * 2
        assert len(embeddings_of(messages)) == 1
        assert messages[-1]["Response"]["response"] == {"Embedding": "Done"}
