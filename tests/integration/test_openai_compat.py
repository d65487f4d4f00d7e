"""The official `openai` package against a real `paddler balancer --compat-openai-addr` and a real
`paddler agent` serving Qwen2.5-Coder 0.5B Instruct (greedy sampling, small token limits).

Bodies and stream events are also read raw and validated strictly against the `openai`
package's pydantic types, with no field they do not declare (`tests/proxy/openai_strictly.py`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from openai.types import Completion, CreateEmbeddingResponse, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent

from tests.integration.cluster import Cluster, free_port, wait_until
from tests.proxy.openai_strictly import strictly

pytestmark = pytest.mark.slow

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city name"}},
            "required": ["city"],
        },
    },
}
PERSON_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


class OpenAICluster:
    def __init__(self, cluster: Cluster, openai_port: int, model_id: str) -> None:
        self.cluster = cluster
        self.base_url = f"http://127.0.0.1:{openai_port}/v1"
        self.model_id = model_id

    def client(self, **options: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key="unused", **options)

    def post(self, path: str, body: Any) -> httpx.Response:
        return httpx.post(f"{self.base_url}{path}", json=body, timeout=120)

    def sse(self, path: str, body: Any) -> list[str]:
        """The `data:` payloads of a stream, read raw."""
        with httpx.stream("POST", f"{self.base_url}{path}", json=body, timeout=120) as response:
            assert response.status_code == 200, response.read()
            assert response.headers["content-type"].startswith("text/event-stream")
            return [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]


def start_openai_cluster(directory: Path, model_path: Path, **parameters: Any) -> Iterator[OpenAICluster]:
    directory.mkdir()
    cluster = Cluster(directory)
    openai_port = free_port()
    try:
        cluster.start_balancer("--compat-openai-addr", f"127.0.0.1:{openai_port}")
        wait_until(lambda: _healthy(f"http://127.0.0.1:{openai_port}/health"), 30, "the OpenAI-compatible service")
        cluster.start_agent("qwen", slots=2)
        cluster.put_desired_state(model_path, context_size=4096, **parameters)
        cluster.wait_for_ready_agents(["qwen"])
        yield OpenAICluster(cluster, openai_port, model_path.name)
    finally:
        cluster.shutdown()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).text == "OK"
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def qwen_openai(tmp_path_factory, qwen_model_path) -> Iterator[OpenAICluster]:
    yield from start_openai_cluster(tmp_path_factory.mktemp("openai") / "generation", qwen_model_path)


@pytest.fixture(scope="module")
def qwen_embeddings(tmp_path_factory, qwen_model_path) -> Iterator[OpenAICluster]:
    yield from start_openai_cluster(
        tmp_path_factory.mktemp("openai") / "embeddings", qwen_model_path, enable_embeddings=True
    )


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


# --- chat completions ------------------------------------------------------------------------


def test_chat_completion_with_usage(qwen_openai: OpenAICluster) -> None:
    client = qwen_openai.client()
    raw = client.chat.completions.with_raw_response.create(
        model="any-name", messages=user("Reply with just the word: yes"), max_tokens=20, temperature=0, seed=7
    )
    body = strictly(ChatCompletion, raw.http_response.json())
    completion = raw.parse()
    assert completion.model == "any-name" == body.model
    assert completion.id.startswith("chatcmpl-")
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert "yes" in (choice.message.content or "").lower()
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens > 0 and 0 < usage.completion_tokens < 20
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # The same prompt again is served from the agent's prompt cache (one agent, greedy sampling).
    again = client.chat.completions.create(model="m", messages=user("Reply with just the word: yes"), max_tokens=20)
    assert again.usage.prompt_tokens_details.cached_tokens > 0
    assert again.choices[0].message.content == choice.message.content


def test_streamed_chat_completion_ends_with_usage_and_done(qwen_openai: OpenAICluster) -> None:
    body = {
        "model": "m",
        "messages": user("Name three colours."),
        "max_tokens": 30,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    data = qwen_openai.sse("/chat/completions", body)
    assert data[-1] == "[DONE]"
    chunks = [strictly(ChatCompletionChunk, json.loads(payload)) for payload in data[:-1]]
    assert len({chunk.id for chunk in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(chunk.usage is None for chunk in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks[:-1])
    assert text.strip()
    # The official client reads the same stream unmodified.
    stream = qwen_openai.client().chat.completions.create(**{**body, "stream": True})
    client_text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert client_text == text


def test_token_limit_gives_finish_reason_length(qwen_openai: OpenAICluster) -> None:
    client = qwen_openai.client()
    completion = client.chat.completions.create(
        model="m", messages=user("Count from 1 to 100, separated by commas."), max_completion_tokens=5
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 5
    stream = client.chat.completions.create(
        model="m", messages=user("Count from 1 to 100, separated by commas."), max_tokens=5, stream=True
    )
    assert [chunk.choices[0].finish_reason for chunk in stream][-1] == "length"


def test_stop_sequence_ends_the_reply_before_it(qwen_openai: OpenAICluster) -> None:
    completion = qwen_openai.client().chat.completions.create(
        model="m", messages=user("Count from 1 to 10, separated by commas."), max_tokens=40, stop=["5"]
    )
    content = completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    assert "4" in content and "5" not in content


def test_json_schema_response_format_gives_valid_json(qwen_openai: OpenAICluster) -> None:
    completion = qwen_openai.client().chat.completions.create(
        model="m",
        messages=user("Describe a person named Alice who is 30 years old."),
        max_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON_SCHEMA}},
    )
    person = json.loads(completion.choices[0].message.content)
    jsonschema.validate(person, PERSON_SCHEMA)
    assert person["name"] == "Alice"
    any_object = qwen_openai.client().chat.completions.create(
        model="m",
        messages=user("Give the capital of France as JSON."),
        max_tokens=40,
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(any_object.choices[0].message.content), dict)


def test_tool_call_is_parsed_and_its_answer_carried_into_the_next_turn(qwen_openai: OpenAICluster) -> None:
    client = qwen_openai.client()
    messages = user("What is the weather in Paris right now?")
    raw = client.chat.completions.with_raw_response.create(
        model="m", messages=messages, tools=[WEATHER_TOOL], max_tokens=60
    )
    strictly(ChatCompletion, raw.http_response.json())
    choice = raw.parse().choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert "paris" in json.loads(call.function.arguments)["city"].lower()
    assert choice.message.content is None
    follow_up = [
        *messages,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "21 degrees Celsius and sunny"},
    ]
    # With tool_choice "none" the model answers from the tool's output, which only the carried messages give it.
    answer = client.chat.completions.create(
        model="m", messages=follow_up, tools=[WEATHER_TOOL], tool_choice="none", max_tokens=40
    )
    assert answer.choices[0].finish_reason == "stop"
    assert "21 degrees" in answer.choices[0].message.content
    streamed = [
        chunk
        for chunk in client.chat.completions.create(
            model="m", messages=messages, tools=[WEATHER_TOOL], max_tokens=60, stream=True
        )
    ]
    tool_deltas = [call for chunk in streamed for call in (chunk.choices[0].delta.tool_calls or [])]
    assert [(delta.index, delta.function.name) for delta in tool_deltas] == [(0, "get_weather")]
    assert streamed[-1].choices[0].finish_reason == "tool_calls"


# --- responses -------------------------------------------------------------------------------


def test_responses_non_streaming(qwen_openai: OpenAICluster) -> None:
    client = qwen_openai.client()
    raw = client.responses.with_raw_response.create(
        model="m",
        instructions="Answer in one word.",
        input="What colour is the sky on a clear day?",
        max_output_tokens=10,
    )
    strictly(Response, raw.http_response.json())
    response = raw.parse()
    assert response.id.startswith("resp_") and response.status == "completed"
    assert "blue" in response.output_text.lower()
    assert response.usage.input_tokens > 0 and 0 < response.usage.output_tokens <= 10
    # As Paddler: the token limit ends the reply as completed too, with its usage.
    limited = client.responses.create(model="m", input="Count from 1 to 100.", max_output_tokens=4)
    assert limited.status == "completed" and limited.incomplete_details is None
    assert limited.usage.output_tokens == 4
    structured = client.responses.create(
        model="m",
        input="Describe a person named Bob who is 41 years old.",
        max_output_tokens=60,
        text={"format": {"type": "json_schema", "name": "person", "schema": PERSON_SCHEMA}},
    )
    jsonschema.validate(json.loads(structured.output_text), PERSON_SCHEMA)


def test_responses_streaming_events(qwen_openai: OpenAICluster) -> None:
    body = {"model": "m", "input": "Say hello.", "max_output_tokens": 12, "stream": True}
    payloads = [json.loads(payload) for payload in qwen_openai.sse("/responses", body)]
    events = [strictly(ResponseStreamEvent, payload) for payload in payloads]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    kinds = [event.type for event in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        events[-1].type,
    ]
    assert events[-1].type == "response.completed"
    assert ["usage" in payload["response"] for payload in (payloads[0], payloads[1], payloads[-1])] == [
        False,
        False,
        True,
    ]
    deltas = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert deltas and events[-1].response.output_text == deltas
    client_events = list(qwen_openai.client().responses.create(**body))
    assert client_events[-1].response.output_text == deltas


def test_responses_function_call_and_its_output(qwen_openai: OpenAICluster) -> None:
    client = qwen_openai.client()
    tool = {"type": "function", **WEATHER_TOOL["function"]}
    first = client.responses.create(
        model="m", input="What is the weather in Paris right now?", tools=[tool], max_output_tokens=60
    )
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather"
    second = client.responses.create(
        model="m",
        input=[
            {"role": "user", "content": "What is the weather in Paris right now?"},
            {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "21 degrees Celsius and sunny"},
        ],
        tools=[tool],
        tool_choice="none",
        max_output_tokens=40,
    )
    assert "21 degrees" in second.output_text


# --- models, completions, embeddings ---------------------------------------------------------


def test_models_lists_the_served_gguf(qwen_openai: OpenAICluster) -> None:
    models = qwen_openai.client().models.list()
    assert [model.id for model in models.data] == [qwen_openai.model_id]
    strictly(Model, httpx.get(f"{qwen_openai.base_url}/models/{qwen_openai.model_id}").json())


def test_text_completion_streaming_and_not(qwen_openai: OpenAICluster) -> None:
    client = qwen_openai.client()
    raw = client.completions.with_raw_response.create(model="m", prompt="def add(a, b):\n    return", max_tokens=6)
    strictly(Completion, raw.http_response.json())
    completion = raw.parse()
    assert completion.object == "text_completion" and "a" in completion.choices[0].text
    assert completion.choices[0].finish_reason in ("stop", "length")
    chunks = list(
        client.completions.create(
            model="m",
            prompt="def add(a, b):\n    return",
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(chunk.choices[0].text for chunk in chunks if chunk.choices) == completion.choices[0].text
    assert chunks[-1].usage.completion_tokens == completion.usage.completion_tokens


def test_embeddings_as_floats_and_base64(qwen_embeddings: OpenAICluster) -> None:
    client = qwen_embeddings.client()
    texts = ["The cat sat on the mat.", "A feline rested on the rug.", "Stock markets fell sharply today."]
    encoded = client.embeddings.create(model="e", input=texts)  # the client asks for base64 and decodes it
    raw = qwen_embeddings.post("/embeddings", {"model": "e", "input": texts, "encoding_format": "float"}).json()
    floats = strictly(CreateEmbeddingResponse, raw)
    assert [item.index for item in floats.data] == [0, 1, 2]
    for decoded, plain in zip(encoded.data, floats.data, strict=True):
        assert len(decoded.embedding) == len(plain.embedding) > 100
        assert math.isclose(sum(value * value for value in plain.embedding), 1.0, rel_tol=1e-3)
        assert all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7) for a, b in zip(decoded.embedding, plain.embedding))

    def similarity(i: int, j: int) -> float:
        return sum(a * b for a, b in zip(floats.data[i].embedding, floats.data[j].embedding))

    assert similarity(0, 1) > similarity(0, 2)
    with pytest.raises(openai.BadRequestError) as nul_byte:
        qwen_embeddings.client(max_retries=0).embeddings.create(model="e", input=["fine", "before\0after"])
    assert (nul_byte.value.param, nul_byte.value.code) == ("input", "invalid_value")
    assert "NUL byte" in nul_byte.value.message


# --- errors and disconnects ------------------------------------------------------------------


def test_invalid_requests_are_400_with_the_offending_param(qwen_openai: OpenAICluster) -> None:
    client = qwen_openai.client(max_retries=0)
    with pytest.raises(openai.BadRequestError) as bad_role:
        client.chat.completions.create(model="m", messages=[{"role": "wizard", "content": "Hi"}])
    assert (bad_role.value.param, bad_role.value.code) == ("messages[0].role", "invalid_value")
    with pytest.raises(openai.BadRequestError) as bad_tool:
        client.chat.completions.create(
            model="m", messages=user("Hi"), tools=[{"type": "web_search"}], tool_choice="required"
        )
    assert bad_tool.value.param == "tool_choice"
    with pytest.raises(openai.BadRequestError) as negative:
        client.chat.completions.create(model="m", messages=user("Hi"), max_tokens=-1)
    assert (negative.value.param, negative.value.code) == ("max_tokens", "integer_below_min_value")
    missing = qwen_openai.post("/chat/completions", {"model": "m"})
    assert missing.status_code == 400
    assert missing.json()["error"]["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as nul_byte:
        client.chat.completions.create(model="m", messages=user("before\0after"))
    assert (nul_byte.value.param, nul_byte.value.code) == ("messages", "invalid_value")
    assert "NUL byte" in nul_byte.value.message
    with pytest.raises(openai.APIStatusError) as not_embeddings:
        client.embeddings.create(model="m", input="Hi")
    assert not_embeddings.value.status_code == 501
    assert "not configured for embeddings" in not_embeddings.value.message


def test_generation_on_an_embeddings_cluster_is_501(qwen_embeddings: OpenAICluster) -> None:
    with pytest.raises(openai.APIStatusError) as refused:
        qwen_embeddings.client(max_retries=0).chat.completions.create(model="m", messages=user("Hi"))
    assert refused.value.status_code == 501


def test_clients_that_disconnect_release_their_slots(qwen_openai: OpenAICluster) -> None:
    client = qwen_openai.client(max_retries=0)
    story = user("Write a very long story about a lighthouse keeper.")
    stream = client.chat.completions.create(model="m", messages=story, max_tokens=1000, stream=True)
    for _, _chunk in zip(range(3), stream):
        pass
    assert qwen_openai.cluster.slots_processing() == {"qwen": 1}
    started = time.monotonic()
    stream.close()
    qwen_openai.cluster.wait_idle(timeout=10)
    assert time.monotonic() - started < 10
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=3).chat.completions.create(model="m", messages=story, max_tokens=1000)
    qwen_openai.cluster.wait_idle(timeout=10)
