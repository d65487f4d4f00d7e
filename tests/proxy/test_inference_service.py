"""The inference service's HTTP routes against the real balancer and scripted fake agents."""

from __future__ import annotations

import json

import trio

from paddler_trio.proxy.service_app import MAX_REQUEST_BODY_BYTES
from tests.proxy.balancer_harness import content_of, errors_of, running_balancer, wait_until

RAW = "/api/v1/continue_from_raw_prompt"
CONVERSATION = "/api/v1/continue_from_conversation_history"
EMBEDDINGS = "/api/v1/generate_embedding_batch"


async def test_health() -> None:
    async with running_balancer() as balancer:
        response = await balancer.http.get(f"{balancer.inference}/health")
        assert response.status_code == 200
        assert response.text == "OK"


async def test_raw_prompt_streams_tokens_then_done_as_ndjson() -> None:
    async with running_balancer() as balancer:
        await balancer.add_agent(name="agent-1", tokens=("Hello", " world"))
        messages = await balancer.raw_prompt()
        assert content_of(messages) == "Hello world"
        request_ids = {message["Response"]["request_id"] for message in messages}
        assert len(request_ids) == 1 and len(request_ids.pop()) == 21
        assert all(message["Response"]["generated_by"] == "agent-1" for message in messages)
        done = messages[-1]["Response"]["response"]["GeneratedToken"]["Done"]
        assert done["usage"]["content_tokens"] == 2
        assert await balancer.slots_processing() == 0


async def test_conversation_request_reaches_the_agent_unchanged() -> None:
    async with running_balancer() as balancer:
        agent = await balancer.add_agent()
        body = {
            "add_generation_prompt": True,
            "conversation_history": [{"role": "user", "content": "Hi"}],
            "enable_thinking": False,
            "max_tokens": 5,
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "f",
                        "description": "d",
                        "parameters": {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
                    },
                }
            ],
        }
        messages = await balancer.post_ndjson(CONVERSATION, body)
        assert content_of(messages) == "Hello, world"
        forwarded = agent.requests[0].request
        assert forwarded.max_tokens == 5
        assert forwarded.tools[0].function.parameters.required == ("a",)


async def test_malformed_bodies_get_clear_400_errors_in_plain_text_as_in_paddler() -> None:
    async with running_balancer() as balancer:
        cases = [
            (RAW, b"{not json", "invalid JSON"),
            (RAW, b'{"raw_prompt": "x", "max_tokens": 3, "temperature_x": 1}', 'unknown field "temperature_x"'),
            (RAW, b'{"raw_prompt": "x"}', 'missing field "max_tokens"'),
            (RAW, b'{"raw_prompt": 5, "max_tokens": 3}', 'field "raw_prompt"'),
            (RAW, b'{"raw_prompt": "x", "max_tokens": -1}', "max_tokens must not be negative"),
            (EMBEDDINGS, b'{"input_batch": []}', 'missing field "normalization_method"'),
            (
                CONVERSATION,
                json.dumps(
                    {
                        "add_generation_prompt": True,
                        "conversation_history": [],
                        "enable_thinking": False,
                        "max_tokens": 3,
                        "tools": [
                            {
                                "type": "function",
                                "function": {
                                    "name": "f",
                                    "description": "d",
                                    "parameters": {"type": "object", "properties": {}, "required": ["x"]},
                                },
                            }
                        ],
                    }
                ).encode(),
                "Invalid request parameters: Required field 'x' not found in properties",
            ),
        ]
        for path, body, expected in cases:
            response = await balancer.http.post(
                f"{balancer.inference}{path}", content=body, headers={"Content-Type": "application/json"}
            )
            assert response.status_code == 400, (path, body, response.text)
            assert response.headers["content-type"] == "text/plain; charset=utf-8"
            assert expected in response.text, response.text


async def test_by_default_max_tokens_may_be_any_i32_as_in_paddler() -> None:
    """Paddler's own tests ask for i32::MAX tokens to generate until the model stops."""
    async with running_balancer() as balancer:
        await balancer.add_agent(tokens=("endless",))
        messages = await balancer.raw_prompt(max_tokens=2**31 - 1)
        assert content_of(messages) == "endless"
        beyond = await balancer.http.post(f"{balancer.inference}{RAW}", json={"raw_prompt": "Hi", "max_tokens": 2**31})
        assert beyond.status_code == 400
        assert "limit of 2147483647" in beyond.json()["error"]  # our own limit: a JSON body


async def test_oversized_body_is_refused_with_413_json() -> None:
    async with running_balancer() as balancer:
        body = b'{"raw_prompt": "' + b"x" * MAX_REQUEST_BODY_BYTES + b'", "max_tokens": 1}'
        response = await balancer.http.post(f"{balancer.inference}{RAW}", content=body)
        assert response.status_code == 413
        assert "50 MiB" in response.json()["error"]


async def test_unknown_route_is_a_404_that_says_so() -> None:
    async with running_balancer() as balancer:
        response = await balancer.http.get(f"{balancer.inference}/api/v1/nothing")
        assert response.status_code == 404
        assert "not found" in response.text


async def test_buffering_disabled_answers_503_in_stream() -> None:
    async with running_balancer(max_buffered_requests=0) as balancer:
        messages = await balancer.raw_prompt()
        assert errors_of(messages) == [(503, "Buffered requests overflow")]


async def test_no_agents_answers_504_after_the_buffer_timeout() -> None:
    async with running_balancer(buffered_request_timeout=0.3) as balancer:
        started = trio.current_time()
        messages = await balancer.raw_prompt()
        assert errors_of(messages) == [(504, "Waiting for available slot timed out")]
        assert 0.3 <= trio.current_time() - started < 2
        assert await balancer.buffered() == 0


async def test_buffer_overflow_beyond_max_buffered_requests() -> None:
    async with running_balancer(max_buffered_requests=2, buffered_request_timeout=0.5) as balancer:
        results: list[list[tuple[int, str]]] = []

        async def one() -> None:
            results.append(errors_of(await balancer.raw_prompt()))

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(one)
        assert sorted(results) == [
            [(503, "Buffered requests overflow")],
            [(504, "Waiting for available slot timed out")],
            [(504, "Waiting for available slot timed out")],
        ]


async def test_buffered_request_completes_when_an_agent_joins_later() -> None:
    async with running_balancer() as balancer:
        result: list[dict] = []

        async def request() -> None:
            result.extend(await balancer.raw_prompt())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(request)
            await wait_until(lambda: balancer.buffered())
            await balancer.add_agent(name="late")
        assert content_of(result) == "Hello, world"
        assert await balancer.buffered() == 0


async def test_buffered_requests_are_served_in_arrival_order() -> None:
    async with running_balancer(buffered_request_timeout=30.0) as balancer:
        # Each request holds the only slot long enough for the next one to be seen buffered,
        # also on a loaded machine.
        agent = await balancer.add_agent(slots=1, token_delay=1.0, tokens=("a",))

        async def buffered_is(count: int) -> bool:
            return await balancer.buffered() == count

        async with trio.open_nursery() as nursery:
            nursery.start_soon(balancer.raw_prompt, "p0")
            await wait_until(lambda: len(agent.requests) == 1)
            for index in range(1, 5):
                nursery.start_soon(balancer.raw_prompt, f"p{index}")
                await wait_until(lambda: buffered_is(index))  # noqa: B023
        prompts = [envelope.request.raw_prompt for envelope in agent.requests]
        assert prompts == [f"p{index}" for index in range(5)]
        assert agent.max_active == 1
