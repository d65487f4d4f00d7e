"""The OpenAI-compatible service's error surfaces, dispatch faults and disconnects, against the
real balancer (in-process) and scripted fake agents. What the model writes is tested against
real processes and the real model in tests/integration/test_openai_compat.py."""

from __future__ import annotations

import base64
import json
import socket
import struct
from typing import Any

import attrs
import pytest
import trio

from paddler_trio.cli_values import socket_address
from paddler_trio.protocol import (
    BalancerDesiredState,
    InferenceParameters,
    LocalToAgentModel,
    to_json,
)
from tests.proxy.balancer_harness import BalancerUnderTest, running_balancer, wait_until

CHAT = "/v1/chat/completions"
HELLO = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}


def openai_balancer(**config: Any):  # type: ignore[no-untyped-def]
    return running_balancer(compat_openai_addr=socket_address("127.0.0.1:0"), **config)


def url(balancer: BalancerUnderTest, path: str) -> str:
    return f"http://{balancer.addresses.compat_openai}{path}"


async def post(balancer: BalancerUnderTest, path: str, body: Any) -> Any:
    return await balancer.http.post(url(balancer, path), json=body)


async def sse_events(
    balancer: BalancerUnderTest, path: str, body: Any, data: list[str] | None = None
) -> tuple[int, list[str]]:
    """The status and the `data:` payloads of a streamed answer; appended to `data` as they come, when given."""
    data = [] if data is None else data
    async with balancer.http.stream("POST", url(balancer, path), json=body) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                data.append(line.removeprefix("data: "))
        return response.status_code, data


def has_text(data: list[str]) -> bool:
    """Whether a streamed answer's `data:` payloads so far carry the scripted agent's first token, "a"."""
    return any('"a"' in payload for payload in data if payload != "[DONE]")


def assert_openai_error(response: Any, status: int, *, param: str | None = None, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


async def configure(balancer: BalancerUnderTest, **parameters: Any) -> None:
    state = attrs.evolve(
        BalancerDesiredState.default(),
        inference_parameters=attrs.evolve(InferenceParameters(), **parameters),
        model=LocalToAgentModel("/models/scripted-fake.gguf"),
    )
    response = await balancer.http.put(f"{balancer.management}/api/v1/balancer_desired_state", content=to_json(state))
    assert response.status_code == 204


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"model": "m"}, "messages", "missing_required_parameter"),
        ({"messages": [{"role": "user", "content": "Hi"}]}, "model", "missing_required_parameter"),
        ({"model": "m", "messages": []}, "messages", "empty_array"),
        ({"model": "m", "messages": [{"role": "wizard", "content": "Hi"}]}, "messages[0].role", "invalid_value"),
        ({"model": "m", "messages": [{"role": "user"}]}, "messages[0].content", "missing_required_parameter"),
        ({"model": "m", "messages": [{"role": "tool", "content": "1"}]}, "messages[0].tool_call_id", None),
        (
            {"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "messages[0].content[0].type",
            "invalid_value",
        ),
        ({**HELLO, "max_tokens": -5}, "max_tokens", "integer_below_min_value"),
        ({**HELLO, "max_completion_tokens": 0}, "max_completion_tokens", "integer_below_min_value"),
        ({**HELLO, "temperature": "hot"}, "temperature", "invalid_type"),
        ({**HELLO, "temperature": 3}, "temperature", "decimal_above_max_value"),
        ({**HELLO, "stop": ["a", ""]}, "stop[1]", "invalid_value"),
        ({**HELLO, "n": 2}, "n", "unsupported_parameter"),
        ({**HELLO, "stream_options": {"include_usage": True}}, "stream_options", "invalid_value"),
        ({**HELLO, "tools": [{"function": {"name": "f"}}]}, "tools[0].type", "missing_required_parameter"),
        ({**HELLO, "tools": [{"type": "web_search"}], "tool_choice": "required"}, "tool_choice", "invalid_value"),
        ({**HELLO, "tools": [{"type": "function"}]}, "tools[0].function", "missing_required_parameter"),
        (
            {
                **HELLO,
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {"type": "object", "required": ["x"], "properties": {}},
                        },
                    }
                ],
            },
            "tools[0].function.parameters",
            "invalid_value",
        ),
        (
            {**HELLO, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice.function.name",
            None,
        ),
        ({**HELLO, "response_format": {"type": "yaml"}}, "response_format.type", "invalid_value"),
        ({**HELLO, "response_format": {"type": "json_object"}, "reasoning_effort": "high"}, "response_format", None),
    ],
)
async def test_invalid_chat_requests_are_400_naming_the_parameter(body: dict, param: str, code: str | None) -> None:
    async with openai_balancer() as balancer:
        error = assert_openai_error(await post(balancer, CHAT, body), 400, param=param, code=code)
        assert error["type"] == "invalid_request_error"
        assert await balancer.buffered() == 0


async def test_malformed_json_unknown_routes_and_methods_answer_in_openai_shape() -> None:
    async with openai_balancer() as balancer:
        response = await balancer.http.post(url(balancer, CHAT), content=b"{not json")
        assert_openai_error(response, 400, code="invalid_json")
        assert_openai_error(await balancer.http.get(url(balancer, "/v1/nothing")), 404, code="not_found")
        assert_openai_error(await balancer.http.get(url(balancer, CHAT)), 405, code="method_not_allowed")
        assert (await balancer.http.get(url(balancer, "/health"))).text == "OK"


async def test_invalid_requests_of_the_other_routes() -> None:
    async with openai_balancer() as balancer:
        cases = [
            ("/v1/responses", {"model": "m", "input": [{"type": "file_search_call"}]}, "input[0].type"),
            (
                "/v1/responses",
                {"model": "m", "input": "Hi", "tools": [{"type": "web_search"}], "tool_choice": {"type": "web_search"}},
                "tool_choice",
            ),
            ("/v1/responses", {"model": "m", "input": "Hi", "max_output_tokens": -1}, "max_output_tokens"),
            ("/v1/responses", {"model": "m", "input": "Hi", "previous_response_id": "resp_1"}, "previous_response_id"),
            ("/v1/responses", {"model": "m"}, "input"),
            ("/v1/completions", {"model": "m"}, "prompt"),
            ("/v1/completions", {"model": "m", "prompt": "Hi", "echo": True}, "echo"),
            ("/v1/embeddings", {"model": "m", "input": [1, 2]}, "input[0]"),
            ("/v1/embeddings", {"model": "m", "input": "x", "encoding_format": "int8"}, "encoding_format"),
        ]
        for path, body, param in cases:
            assert_openai_error(await post(balancer, path, body), 400, param=param)


async def test_chat_completion_through_a_fake_agent_and_its_native_request() -> None:
    async with openai_balancer() as balancer:
        agent = await balancer.add_agent(tokens=("Hello", ",", " world"))
        body = {
            **HELLO,
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            ],
            "temperature": 0.5,
            "top_p": 0.9,
            "seed": -1,
            "stop": "END",
            "max_tokens": 7,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
        }
        response = await post(balancer, CHAT, body)
        assert response.status_code == 200, response.text
        completion = response.json()
        assert completion["id"].startswith("chatcmpl-")
        assert completion["model"] == "m"
        assert completion["choices"][0]["message"]["content"] == "Hello, world"
        assert completion["choices"][0]["finish_reason"] == "stop"
        assert completion["usage"]["completion_tokens"] == 3
        native = agent.requests[0].request
        assert [message.role for message in native.conversation_history] == ["system", "user", "assistant", "tool"]
        assert native.conversation_history[2].tool_calls[0].function.name == "w"
        assert native.conversation_history[3].tool_call_id == "c1"
        assert (native.temperature, native.top_p, native.seed, native.stop, native.max_tokens) == (
            0.5,
            0.9,
            2**64 - 1,
            ("END",),
            7,
        )
        assert native.enable_thinking is False  # a grammar needs thinking off
        assert json.loads(native.grammar.schema) == {"type": "object"}
        assert await balancer.slots_processing() == 0


async def test_token_limit_reached_is_finish_reason_length() -> None:
    async with openai_balancer() as balancer:
        await balancer.add_agent(tokens=("a", "b", "c"))
        completion = (await post(balancer, CHAT, {**HELLO, "max_completion_tokens": 3})).json()
        assert completion["choices"][0]["finish_reason"] == "length"


async def test_buffer_overflow_is_503_with_retry_after_streaming_or_not() -> None:
    async with openai_balancer(max_buffered_requests=0) as balancer:
        response = await post(balancer, CHAT, HELLO)
        assert_openai_error(response, 503)
        assert response.headers["Retry-After"] == "1"
        streamed = await post(balancer, CHAT, {**HELLO, "stream": True})
        assert_openai_error(streamed, 503)
        assert_openai_error(await post(balancer, "/v1/responses", {"model": "m", "input": "Hi", "stream": True}), 503)


async def test_waiting_too_long_for_a_slot_is_504() -> None:
    async with openai_balancer(buffered_request_timeout=0.3) as balancer:
        error = assert_openai_error(await post(balancer, "/v1/completions", {"model": "m", "prompt": "Hi"}), 504)
        assert error["type"] == "timeout"
        assert await balancer.buffered() == 0


async def test_frozen_agent_is_504_after_the_item_timeout() -> None:
    async with openai_balancer(inference_item_timeout=0.3) as balancer:
        await balancer.add_agent(frozen=True)
        assert_openai_error(await post(balancer, CHAT, {**HELLO, "stream": True}), 504)


async def test_agent_lost_mid_stream_ends_with_an_error_event_then_done() -> None:
    async with openai_balancer() as balancer:
        agent = await balancer.add_agent(tokens=tuple("abcdefghij"), token_delay=0.1)
        result: list[Any] = []
        data: list[str] = []

        async def request() -> None:
            result.append(await sse_events(balancer, CHAT, {**HELLO, "stream": True}, data))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(request)
            await wait_until(lambda: has_text(data))
            await agent.drop()
        status, data = result[0]
        assert status == 200
        assert data[-1] == "[DONE]"
        error = json.loads(data[-2])["error"]
        assert error["message"] == "Agent controller connection closed"
        assert json.loads(data[1])["choices"][0]["delta"] == {"content": "a"}


async def test_agent_lost_mid_responses_stream_is_response_failed() -> None:
    async with openai_balancer() as balancer:
        agent = await balancer.add_agent(tokens=tuple("abcdefghij"), token_delay=0.1)
        result: list[Any] = []
        data: list[str] = []

        async def request() -> None:
            result.append(await sse_events(balancer, "/v1/responses", {"model": "m", "input": "Hi", "stream": True}, data))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(request)
            await wait_until(lambda: has_text(data))
            await agent.drop()
        events = [json.loads(data) for data in result[0][1]]
        assert [event["sequence_number"] for event in events] == list(range(len(events)))
        assert events[-1]["type"] == "response.failed"
        assert events[-1]["response"]["error"] == {
            "code": "server_error",
            "message": "Agent controller connection closed",
        }


async def test_shutdown_ends_an_open_stream_with_a_503_event_then_done() -> None:
    async with openai_balancer() as balancer:
        await balancer.add_agent(tokens=tuple("abcdefghij"), token_delay=0.2)
        result: list[Any] = []
        data: list[str] = []

        async def request() -> None:
            result.append(await sse_events(balancer, "/v1/completions", {"model": "m", "prompt": "Hi", "stream": True}, data))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(request)
            await wait_until(lambda: has_text(data))  # the first token is out: the stream has started
            balancer.shutdown.trigger()
        status, data = result[0]
        assert status == 200 and data[-1] == "[DONE]"
        assert json.loads(data[-2])["error"]["message"] == "balancer is shutting down"


@pytest.mark.parametrize("stream", [False, True])
async def test_client_that_disconnects_frees_the_slot_and_stops_the_agent(stream: bool) -> None:
    async with openai_balancer() as balancer:
        agent = await balancer.add_agent(tokens=tuple("abcdefghij"), token_delay=0.2)
        client = raw_post(balancer, CHAT, {**HELLO, "stream": stream})
        await wait_until(lambda: agent.active)
        client.close()
        await wait_until(lambda: agent.stops)
        await wait_until(lambda: not agent.active)
        await wait_until(lambda: _slots_free(balancer))


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (CHAT, {**HELLO, "stream": True}),
        (CHAT, HELLO),
        ("/v1/responses", {"model": "m", "input": "Hi"}),
    ],
)
async def test_half_closed_client_leaves_the_buffer_at_once(path: str, body: dict) -> None:
    async with openai_balancer(buffered_request_timeout=30.0) as balancer:
        client = raw_post(balancer, path, body)
        await wait_until(balancer.buffered)
        client.shutdown(socket.SHUT_WR)
        with trio.fail_after(1):
            await wait_until(lambda: _buffered_is_zero(balancer))
        client.close()


async def test_generation_in_embeddings_mode_is_501_and_embeddings_elsewhere_too() -> None:
    async with openai_balancer() as balancer:
        await balancer.add_agent()
        error = assert_openai_error(await post(balancer, "/v1/embeddings", {"model": "m", "input": "x"}), 501)
        assert "not configured for embeddings" in error["message"]
        await configure(balancer, enable_embeddings=True)
        for path, body, route_name in [
            (CHAT, HELLO, "Chat completions"),
            ("/v1/completions", {"model": "m", "prompt": "Hi"}, "Completions"),
            ("/v1/responses", {"model": "m", "input": "Hi"}, "Responses"),
        ]:
            error = assert_openai_error(await post(balancer, path, body), 501, code="token_generation_disabled")
            assert error["message"] == f"{route_name} are disabled while the cluster is configured for embeddings"


async def test_embeddings_come_back_in_input_order_as_floats_or_base64() -> None:
    async with openai_balancer() as balancer:
        await balancer.add_agent(name="e1", slots=2)
        await balancer.add_agent(name="e2", slots=2)
        await configure(balancer, enable_embeddings=True, embedding_batch_size=1)
        texts = ["a", "bb", "ccc", "dddd", "eeeee"]
        floats = (await post(balancer, "/v1/embeddings", {"model": "emb", "input": texts})).json()
        assert floats["object"] == "list" and floats["model"] == "emb"
        assert [item["index"] for item in floats["data"]] == list(range(5))
        assert [item["embedding"] for item in floats["data"]] == [[float(len(text)), 1.0] for text in texts]
        encoded = (
            await post(balancer, "/v1/embeddings", {"model": "emb", "input": "abc", "encoding_format": "base64"})
        ).json()
        assert struct.unpack("<2f", base64.b64decode(encoded["data"][0]["embedding"])) == (3.0, 1.0)
        assert await balancer.slots_processing() == 0


async def test_models_lists_the_applicable_model() -> None:
    async with openai_balancer() as balancer:
        assert (await balancer.http.get(url(balancer, "/v1/models"))).json() == {"object": "list", "data": []}
        await configure(balancer)
        listed = (await balancer.http.get(url(balancer, "/v1/models"))).json()["data"]
        assert [(model["id"], model["object"], model["owned_by"]) for model in listed] == [
            ("scripted-fake.gguf", "model", "paddler")
        ]
        one = await balancer.http.get(url(balancer, "/v1/models/scripted-fake.gguf"))
        assert one.json()["id"] == "scripted-fake.gguf"
        assert_openai_error(await balancer.http.get(url(balancer, "/v1/models/other")), 404, code="model_not_found")


def raw_post(balancer: BalancerUnderTest, path: str, body: Any) -> socket.socket:
    """A request sent over a plain socket, so that the test can drop the connection at will."""
    assert balancer.addresses.compat_openai is not None
    host, port = balancer.addresses.compat_openai.rsplit(":", 1)
    payload = json.dumps(body).encode()
    client = socket.create_connection((host, int(port)))
    client.sendall(
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    return client


async def _slots_free(balancer: BalancerUnderTest) -> bool:
    return await balancer.slots_processing() == 0


async def _buffered_is_zero(balancer: BalancerUnderTest) -> bool:
    return await balancer.buffered() == 0
