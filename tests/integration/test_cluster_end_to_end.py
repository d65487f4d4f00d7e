"""A real balancer and real agents on the Gemma model, driven by the official paddler-client
and by raw HTTP / WebSocket clients, as a user would."""

from __future__ import annotations

import asyncio
import collections
import json
import signal
import threading
import time

import httpx
import pytest
from paddler_client import ClientInference, ClientManagement
from paddler_client.continue_from_raw_prompt_params import ContinueFromRawPromptParams
from paddler_client.embedding_input_document import EmbeddingInputDocument
from paddler_client.embedding_normalization_method import EmbeddingNormalizationMethod
from paddler_client.error import HttpError
from paddler_client.generate_embedding_batch_params import GenerateEmbeddingBatchParams
from websockets.sync.client import connect as websocket_connect

from tests.integration.cluster import Cluster, ndjson_lines, wait_until

pytestmark = pytest.mark.slow

LONG = 300  # tokens: long enough to still be running while a test acts


def raw_prompt_body(prompt: str, max_tokens: int) -> dict:
    return {"raw_prompt": prompt, "max_tokens": max_tokens}


def ndjson_stream_is_complete(lines: list[dict]) -> bool:
    tokens = [line for line in lines[:-1] if "ContentToken" in line["Response"]["response"]["GeneratedToken"]]
    done = lines[-1]["Response"]["response"]["GeneratedToken"]["Done"]
    return len(tokens) == 6 and done["usage"]["content_tokens"] == 6 and len({line["Response"]["request_id"] for line in lines}) == 1


def two_agent_cluster(cluster_factory, gemma_model_path, *flags: str, slots: int = 2) -> Cluster:
    cluster = cluster_factory(*flags)
    cluster.start_agent("a1", slots=slots)
    cluster.start_agent("a2", slots=slots)
    cluster.put_desired_state(gemma_model_path)
    cluster.wait_for_ready_agents(["a1", "a2"])
    return cluster


def test_paddler_client_drives_management_and_inference(cluster_factory, gemma_model_path):
    cluster = two_agent_cluster(cluster_factory, gemma_model_path)

    async def scenario() -> dict:
        async with ClientManagement(cluster.management_url) as management, ClientInference(cluster.inference_url) as inference:
            agents = await management.get_agents()
            desired = await management.get_balancer_desired_state()
            agent_id = agents.agents[0].id
            metadata = await management.get_model_metadata(agent_id)
            template = await management.get_chat_template_override(agent_id)
            metrics = await management.get_metrics()
            stream = management.agents_stream()
            first_snapshot = await stream.__anext__()
            await stream.aclose()
            tokens, done = [], None
            response = await inference.continue_from_raw_prompt(
                ContinueFromRawPromptParams(raw_prompt="1, 2, 3, 4, 5, 6,", max_tokens=12)
            )
            async for message in response:
                if message.is_token:
                    tokens.append(message.token)
                    generated_by = message.generated_by
                if message.is_done:
                    done = message
            async with httpx.AsyncClient() as client:
                response = await client.post(
                    f"{cluster.inference_url}/api/v1/continue_from_raw_prompt", json=raw_prompt_body("7, 8, 9,", 6)
                )
            ndjson = ndjson_lines(response)
            # Pre-stream errors reach the client's exception as Paddler's plain text, whole.
            documents = [EmbeddingInputDocument(id="d", content="Embeddings are off in this cluster.")]
            params = GenerateEmbeddingBatchParams(input_batch=documents, normalization_method=EmbeddingNormalizationMethod.l2())
            refusal = None
            try:
                async for _ in inference.generate_embedding_batch(params):
                    pass
            except HttpError as error:
                refusal = (error.status_code, error.message)
            return dict(
                health=(await management.get_health(), await inference.get_health()),
                agents=agents,
                desired=desired,
                metadata=metadata,
                template=template,
                metrics=metrics,
                first_snapshot=first_snapshot,
                text="".join(tokens),
                generated_by=generated_by,
                done=done,
                ndjson=ndjson,
                refusal=refusal,
            )

    seen = asyncio.run(scenario())
    assert seen["health"] == ("OK", "OK")
    assert sorted(agent.name for agent in seen["agents"].agents) == ["a1", "a2"]
    assert all(agent.slots_total == 2 for agent in seen["agents"].agents)
    assert seen["desired"].model.local_path == str(gemma_model_path)
    assert seen["metadata"].metadata["general.architecture"] == "gemma3"
    assert seen["template"] is None
    assert "paddler_slots_total 4" in seen["metrics"]
    assert len(seen["first_snapshot"].agents) == 2
    assert seen["text"].startswith(" 7, 8, 9")
    assert seen["generated_by"] in ("a1", "a2")
    assert seen["done"].summary.usage.content_tokens == 12
    assert ndjson_stream_is_complete(seen["ndjson"])
    assert seen["refusal"] == (501, "Embedding generation is not enabled in the inference parameters")
    cluster.wait_idle()


def test_burst_of_four_is_spread_two_per_agent(cluster_factory, gemma_model_path):
    cluster = two_agent_cluster(cluster_factory, gemma_model_path)

    async def burst() -> list[str]:
        async with ClientInference(cluster.inference_url) as inference:

            async def one(index: int) -> str:
                stream = await inference.continue_from_raw_prompt(
                    ContinueFromRawPromptParams(raw_prompt=f"Story {index}: once upon a time", max_tokens=40)
                )
                served_by = None
                async for message in stream:
                    served_by = message.generated_by or served_by
                return served_by

            return await asyncio.gather(*(one(index) for index in range(4)))

    assert collections.Counter(asyncio.run(burst())) == {"a1": 2, "a2": 2}
    cluster.wait_idle()


def test_cancellations_release_slots_and_buffer_places(cluster_factory, gemma_model_path):
    cluster = two_agent_cluster(cluster_factory, gemma_model_path, "--buffered-request-timeout", "30000")
    url = f"{cluster.inference_url}/api/v1/continue_from_raw_prompt"

    # HTTP: the client drops the stream after two lines.
    with httpx.Client(timeout=30) as client, client.stream("POST", url, json=raw_prompt_body("Once upon a time", LONG)) as response:
        lines = response.iter_lines()
        next(lines), next(lines)
        assert sum(cluster.slots_processing().values()) == 1
    cluster.wait_idle()

    # WebSocket: StopRespondingTo, then the socket stays usable and nothing more comes for that id.
    with websocket_connect(f"ws://127.0.0.1:{cluster.inference_port}/api/v1/inference_socket") as socket:
        socket.send(json.dumps({"Request": {"id": "w-1", "request": {"ContinueFromRawPrompt": raw_prompt_body("Once upon a time", LONG)}}}))
        first = json.loads(socket.recv(timeout=30))
        assert first["Response"]["request_id"] == "w-1"
        socket.send(json.dumps({"Notification": {"StopRespondingTo": "w-1"}}))
        cluster.wait_idle()
        socket.send(json.dumps({"Request": {"id": "w-2", "request": {"ContinueFromRawPrompt": raw_prompt_body("1, 2, 3,", 4)}}}))
        frames = []
        while True:
            frame = json.loads(socket.recv(timeout=30))
            frames.append(frame)
            if "Done" in json.dumps(frame) and frame.get("Response", {}).get("request_id") == "w-2":
                break
        assert all(frame["Response"]["request_id"] == "w-2" for frame in frames if "Response" in frame)

    # A buffered request whose client leaves frees its place at once.
    clients = [httpx.Client(timeout=60) for _ in range(5)]
    streams = [client.stream("POST", url, json=raw_prompt_body("Once upon a time", LONG)) for client in clients]
    try:
        # Keep each line iterator alive: dropping one closes that response (a client disconnect).
        line_iterators = [stream.__enter__().iter_lines() for stream in streams[:4]]
        for lines in line_iterators:
            next(lines)
        assert sum(cluster.slots_processing().values()) == 4
        waiting = threading.Thread(target=lambda: streams[4].__enter__(), daemon=True)
        waiting.start()
        wait_until(lambda: cluster.buffered_requests() == 1, 10, "the fifth request to be buffered")
        clients[4].close()
        wait_until(lambda: cluster.buffered_requests() == 0, 5, "the buffered place to be released")
    finally:
        for stream in streams[:4]:
            stream.__exit__(None, None, None)
        for client in clients:
            client.close()
    cluster.wait_idle()


def test_buffering_errors_and_scale_from_zero(cluster_factory, gemma_model_path):
    no_buffer = cluster_factory("--max-buffered-requests", "0")
    lines = ndjson_lines(httpx.post(f"{no_buffer.inference_url}/api/v1/continue_from_raw_prompt", json=raw_prompt_body("Hi", 4), timeout=10))
    assert lines == [{"Error": {"request_id": lines[0]["Error"]["request_id"], "error": {"code": 503, "description": "Buffered requests overflow"}}}]

    short_wait = cluster_factory("--buffered-request-timeout", "500")
    lines = ndjson_lines(httpx.post(f"{short_wait.inference_url}/api/v1/continue_from_raw_prompt", json=raw_prompt_body("Hi", 4), timeout=10))
    assert lines[0]["Error"]["error"] == {"code": 504, "description": "Waiting for available slot timed out"}

    # Scale from zero: the request waits in the buffer until an agent joins and loads the model.
    from_zero = cluster_factory("--buffered-request-timeout", "60000")
    result: dict = {}

    def send() -> None:
        response = httpx.post(f"{from_zero.inference_url}/api/v1/continue_from_raw_prompt", json=raw_prompt_body("1, 2, 3,", 6), timeout=90)
        result["lines"] = ndjson_lines(response)

    sender = threading.Thread(target=send)
    sender.start()
    wait_until(lambda: from_zero.buffered_requests() == 1, 10, "the request to be buffered")
    from_zero.put_desired_state(gemma_model_path)
    from_zero.start_agent("late", slots=1)
    sender.join(90)
    assert result["lines"][-1]["Response"]["response"]["GeneratedToken"]["Done"]["usage"]["content_tokens"] == 6
    assert result["lines"][0]["Response"]["generated_by"] == "late"
    from_zero.wait_idle()


def test_buffered_requests_are_served_in_arrival_order(cluster_factory, gemma_model_path):
    cluster = cluster_factory("--buffered-request-timeout", "60000")
    cluster.start_agent("only", slots=1)
    cluster.put_desired_state(gemma_model_path)
    cluster.wait_for_ready_agents(["only"])
    url = f"{cluster.inference_url}/api/v1/continue_from_raw_prompt"
    finished: list[str] = []

    def send(name: str, max_tokens: int) -> None:
        httpx.post(url, json=raw_prompt_body(f"{name}: once upon a time", max_tokens), timeout=120)
        finished.append(name)

    threads = [threading.Thread(target=send, args=("first", 30))]
    threads[0].start()
    wait_until(lambda: cluster.slots_processing()["only"] == 1, 10, "the first request to run")
    for index, name in enumerate(["second", "third", "fourth"], start=1):
        thread = threading.Thread(target=send, args=(name, 3))
        thread.start()
        threads.append(thread)
        wait_until(lambda: cluster.buffered_requests() == index, 10, f"{name} to be buffered")
    for thread in threads:
        thread.join(120)
    assert finished == ["first", "second", "third", "fourth"]
    cluster.wait_idle()


def test_four_single_slot_agents_each_take_one_and_a_killed_agent_gives_502(cluster_factory, gemma_model_path):
    cluster = cluster_factory()
    names = ["n1", "n2", "n3", "n4"]
    for name in names:
        cluster.start_agent(name, slots=1)
    cluster.put_desired_state(gemma_model_path)
    cluster.wait_for_ready_agents(names)
    url = f"{cluster.inference_url}/api/v1/continue_from_raw_prompt"

    clients = [httpx.Client(timeout=60) for _ in names]
    streams = [client.stream("POST", url, json=raw_prompt_body(f"Story {i}: once upon a time", LONG)) for i, client in enumerate(clients)]
    try:
        responses = [stream.__enter__() for stream in streams]
        line_iterators = [response.iter_lines() for response in responses]
        first_lines = [json.loads(next(lines)) for lines in line_iterators]
        served_by = [line["Response"]["generated_by"] for line in first_lines]
        assert sorted(served_by) == names

        victim_index = 0
        victim = served_by[victim_index]
        cluster.agents[victim].process.send_signal(signal.SIGKILL)
        rest = [json.loads(line) for line in line_iterators[victim_index] if line.strip()]
        assert rest[-1]["Error"]["error"] == {"code": 502, "description": "Agent controller connection closed"}
        wait_until(lambda: cluster.agent_named(victim) is None, 10, "the killed agent to leave the pool")
    finally:
        for stream in streams:
            stream.__exit__(None, None, None)
        for client in clients:
            client.close()
    cluster.wait_idle()
    assert sorted(cluster.slots_processing()) == sorted(set(names) - {victim})
    lines = ndjson_lines(httpx.post(url, json=raw_prompt_body("1, 2, 3,", 4), timeout=30))
    assert lines[-1]["Response"]["response"]["GeneratedToken"]["Done"]["usage"]["content_tokens"] == 4
    assert lines[-1]["Response"]["generated_by"] != victim


def test_embeddings_fan_out_over_two_agents(cluster_factory, gemma_model_path):
    cluster = cluster_factory()
    cluster.start_agent("e1", slots=2)
    cluster.start_agent("e2", slots=2)
    cluster.put_desired_state(gemma_model_path, enable_embeddings=True)
    cluster.wait_for_ready_agents(["e1", "e2"])

    async def embed() -> list:
        async with ClientInference(cluster.inference_url) as inference:
            documents = [EmbeddingInputDocument(id=f"d{i}", content=f"Document {i} talks about item {i}.") for i in range(6)]
            params = GenerateEmbeddingBatchParams(input_batch=documents, normalization_method=EmbeddingNormalizationMethod.l2())
            return [message async for message in inference.generate_embedding_batch(params)]

    messages = asyncio.run(embed())
    embeddings = [message for message in messages if message.embedding_data is not None]
    assert sorted(message.embedding_data.source_document_id for message in embeddings) == [f"d{i}" for i in range(6)]
    assert {message.generated_by for message in embeddings} == {"e1", "e2"}
    assert messages[-1].kind.value == "embedding_done"
    generation = httpx.post(f"{cluster.inference_url}/api/v1/continue_from_raw_prompt", json=raw_prompt_body("Hi", 3), timeout=10)
    assert generation.status_code == 501
    cluster.wait_idle()


def test_bad_requests_get_clear_errors_and_leak_nothing(cluster_factory, gemma_model_path):
    cluster = two_agent_cluster(cluster_factory, gemma_model_path)
    url = f"{cluster.inference_url}/api/v1/continue_from_raw_prompt"
    # Paddler answers these as plain text, the reason being the whole body; so do we.
    cases = {
        "invalid JSON": b'{"raw_prompt": ',
        'unknown field "surprise"': json.dumps({"raw_prompt": "x", "max_tokens": 3, "surprise": 1}).encode(),
        'missing field "max_tokens"': json.dumps({"raw_prompt": "x"}).encode(),
        'field "max_tokens"': json.dumps({"raw_prompt": "x", "max_tokens": "three"}).encode(),
        "max_tokens must not be negative": json.dumps({"raw_prompt": "x", "max_tokens": -5}).encode(),
    }
    for reason, body in cases.items():
        response = httpx.post(url, content=body, headers={"Content-Type": "application/json"}, timeout=10)
        assert response.status_code == 400, reason
        assert reason in response.text, response.text
    oversized = httpx.post(url, content=b" " * (60 * 2**20), headers={"Content-Type": "application/json"}, timeout=30)
    assert oversized.status_code == 413
    unknown_agent = httpx.get(f"{cluster.management_url}/api/v1/agent/nobody/model_metadata", timeout=10)
    assert (unknown_agent.status_code, unknown_agent.text) == (404, 'Agent "nobody" is not registered')
    bad_state = httpx.put(f"{cluster.management_url}/api/v1/balancer_desired_state", json={"model": "None"}, timeout=10)
    assert bad_state.status_code == 400 and bad_state.text.startswith("Invalid balancer desired state: "), bad_state.text
    cluster.wait_idle()
    ok = ndjson_lines(httpx.post(url, json=raw_prompt_body("1, 2,", 3), timeout=30))
    assert "Done" in json.dumps(ok[-1])


def test_sigterm_without_a_grace_period_shuts_the_cluster_down_quickly(cluster_factory, gemma_model_path):
    """Paddler's shutdown: streams end at once with the 503 envelope."""
    cluster = two_agent_cluster(cluster_factory, gemma_model_path, "--shutdown-grace-period", "0", slots=1)
    url = f"{cluster.inference_url}/api/v1/continue_from_raw_prompt"
    with httpx.Client(timeout=30) as client, client.stream("POST", url, json=raw_prompt_body("Once upon a time", LONG)) as response:
        lines = response.iter_lines()
        next(lines)
        started = time.monotonic()
        cluster.balancer.signal(signal.SIGTERM)
        rest = [json.loads(line) for line in lines if line.strip()]
    assert rest[-1]["Error"]["error"] == {"code": 503, "description": "balancer is shutting down"}
    assert cluster.balancer.process.wait(10) == 0
    assert time.monotonic() - started < 5
    for agent in cluster.agents.values():
        assert agent.stop() == 0
