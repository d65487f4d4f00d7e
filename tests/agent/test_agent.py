"""The real agent (in-process `run_agent`, and a `python -m paddler_trio agent` subprocess)
against a scripted fake balancer, serving with the real Gemma 3 270M model (raw prompts:
it is a base model without a chat template)."""

from __future__ import annotations

import logging
import os
import signal
import string
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio

from paddler_trio.agent.agent_config import AgentConfig
from paddler_trio.agent.management_link import RECONNECT_INTERVAL
from paddler_trio.cli_values import socket_address
from paddler_trio.nursery.agent import run_agent
from paddler_trio.protocol import InferenceParameters, unstructure
from paddler_trio.protocol.request_extensions import REQUEST_EXTENSIONS_HEADER, REQUEST_EXTENSIONS_VERSION
from tests.agent.scripted_fake_balancer import (
    AgentConnection,
    Frame,
    ScriptedFakeBalancer,
    free_port,
    is_terminal_for,
    payload_for,
    snapshot_of,
)
from tests.waiting import wait_until

# One llama.cpp thread: the test machine has 2 cores shared with other work.
THREADS = 1
TEMPLATE = "{% for message in messages %}{{ message.role }}: {{ message.content }}\n{% endfor %}assistant:"


def desired_state(
    model: Path | str | Frame, *, chat_template_override: str | None = None, enable_embeddings: bool = False
) -> Frame:
    parameters = attrs.evolve(
        InferenceParameters.deterministic(), context_size=2048, n_batch=512, enable_embeddings=enable_embeddings
    )
    return {
        "chat_template_override": {"content": chat_template_override} if chat_template_override else None,
        "inference_parameters": unstructure(parameters),
        "model": model if isinstance(model, dict) else {"LocalToAgent": str(model)},
        "multimodal_projection": "None",
    }


def raw_prompt(max_tokens: int, prompt: str = "The capital of France is") -> Frame:
    return {"ContinueFromRawPrompt": {"grammar": None, "max_tokens": max_tokens, "raw_prompt": prompt}}


def reports_no_slots(frame: Frame) -> bool:
    snapshot = snapshot_of(frame)
    return snapshot is not None and snapshot["slots_total"] == 0


def is_token(payload: Frame) -> bool:
    return "ContentToken" in payload.get("GeneratedToken", {})


def done_usage(payload: Frame) -> dict[str, int]:
    assert "Done" in payload.get("GeneratedToken", {}), f"expected Done, got {payload}"
    return payload["GeneratedToken"]["Done"]["usage"]


@pytest.fixture
async def balancer(nursery: trio.Nursery) -> ScriptedFakeBalancer:
    fake = ScriptedFakeBalancer()
    await nursery.start(fake.serve)
    return fake


async def start_agent(
    nursery: trio.Nursery, address: str, *, slots: int = 2, name: str | None = None, cache_ram_mib: int = 64
) -> str:
    config = AgentConfig(
        management_addrs=(socket_address(address),), slots=slots, name=name, threads=THREADS, cache_ram_mib=cache_ram_mib
    )
    return await nursery.start(run_agent, config)


async def loaded(connection: AgentConnection, model: Path, *, slots: int = 2) -> Frame:
    start = len(connection.frames)
    await connection.set_state(desired_state(model))
    return await connection.wait_for_status(
        lambda s: s["state_application_status"] == "Applied" and s["slots_total"] == slots, start=start
    )


async def test_registers_with_paddlers_shape_and_answers_without_a_model(
    nursery: trio.Nursery, balancer: ScriptedFakeBalancer
) -> None:
    agent_id = await start_agent(nursery, balancer.address, slots=4, name="gpu-1")
    connection = await balancer.first_connection()
    assert connection.agent_id == agent_id
    assert len(agent_id) == 21 and set(agent_id) <= set(string.ascii_letters + string.digits + "_-")
    await connection.wait_for(lambda frame: True)
    assert connection.frames[0] == {
        "Notification": {
            "RegisterAgent": {
                "name": "gpu-1",
                "slot_aggregated_status_snapshot": {
                    "desired_slots_total": 4,
                    "download_current": 0,
                    "download_filename": None,
                    "download_indeterminate": True,
                    "download_total": 0,
                    "issues": [],
                    "model_path": None,
                    "slots_processing": 0,
                    "slots_total": 0,
                    "state_application_status": "Fresh",
                    "uses_chat_template_override": False,
                    "version": 0,
                },
            }
        }
    }

    await connection.request("r-1", raw_prompt(4))
    answer = await connection.answer_to("r-1")
    assert answer["Error"]["code"] == 503 and "No model is loaded" in answer["Error"]["description"]
    await connection.request("m-1", "GetModelMetadata")
    assert await connection.answer_to("m-1") == {"ModelMetadata": None}
    await connection.request("t-1", "GetChatTemplateOverride")
    assert await connection.answer_to("t-1") == {"ChatTemplateOverride": None}

    await connection.send('{"Request":{"id":"bad-1","request":{"Bogus":{}}}}')
    answer = await connection.answer_to("bad-1")
    assert answer["Error"]["code"] == 400 and "Bogus" in answer["Error"]["description"]
    await connection.send("this is not JSON")
    await connection.send('{"Notification":{"StopRespondingTo":"nobody"}}')
    await connection.send({"Notification": {"Version": {"version": "3.0.0"}}})
    await connection.request("m-2", "GetModelMetadata")
    assert await connection.answer_to("m-2") == {"ModelMetadata": None}  # still alive and answering

    start = len(connection.frames)
    await connection.set_state(desired_state({"Url": {"url": "ftp://example.com/model.gguf"}}))
    status = await connection.wait_for_status(
        lambda s: s["state_application_status"] == "AttemptedAndNotAppliable", start=start
    )
    assert status["slots_total"] == 0 and status["slots_processing"] == 0
    assert status["issues"] == [{"DownloadUrlIsMalformed": {"model_path": "ftp://example.com/model.gguf"}}]

    # UpdateAgentStatus every second even without changes.
    start = len(connection.frames)
    started = trio.current_time()
    for _ in range(2):
        start = 1 + await connection.wait_for(lambda f: "UpdateAgentStatus" in f.get("Notification", {}), start=start)
    assert trio.current_time() - started < 3.0


async def test_the_upgrade_request_offers_our_request_extensions(
    nursery: trio.Nursery, balancer: ScriptedFakeBalancer
) -> None:
    await start_agent(nursery, balancer.address)
    connection = await balancer.first_connection()
    assert connection.upgrade_headers[REQUEST_EXTENSIONS_HEADER] == REQUEST_EXTENSIONS_VERSION


async def test_an_agent_without_a_model_reports_the_chat_template_override_it_was_given(
    nursery: trio.Nursery, balancer: ScriptedFakeBalancer
) -> None:
    await start_agent(nursery, balancer.address)
    connection = await balancer.first_connection()
    await connection.set_state({**desired_state(Path("unused"), chat_template_override=TEMPLATE), "model": "None"})
    status = await connection.wait_for_status(lambda s: s["state_application_status"] == "Applied")
    assert status["uses_chat_template_override"] is True and status["slots_total"] == 0
    await connection.request("t-1", "GetChatTemplateOverride")
    assert await connection.answer_to("t-1") == {"ChatTemplateOverride": {"content": TEMPLATE}}


async def test_reconnects_with_the_same_id_and_reports_an_outage_once(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="paddler_trio.agent.management_link")
    port = free_port()
    agent_id = await start_agent(nursery, f"127.0.0.1:{port}")

    def outage_reports() -> list[logging.LogRecord]:
        return [record for record in caplog.records if "cannot reach the balancer" in record.getMessage()]

    # The balancer is down at start: the agent reports it, then retries twice more (real
    # clock, once a reconnect interval) without reporting it again.
    await wait_until(outage_reports)
    await trio.sleep(2.5 * RECONNECT_INTERVAL)
    fake = ScriptedFakeBalancer()
    await nursery.start(lambda task_status: fake.serve(port=port, task_status=task_status))
    first = await fake.first_connection(timeout=5)
    assert first.agent_id == agent_id
    await first.wait_for(lambda frame: "RegisterAgent" in frame.get("Notification", {}))
    assert len(outage_reports()) == 1

    await first.drop()
    second = await fake.next_connection(after=1, timeout=5)
    assert second.agent_id == agent_id
    await second.wait_for(lambda frame: True)
    assert "RegisterAgent" in second.frames[0]["Notification"]


async def test_serves_raw_prompts_concurrently_stops_and_cancels_on_link_loss(
    nursery: trio.Nursery, balancer: ScriptedFakeBalancer, gemma_model_path: Path
) -> None:
    await start_agent(nursery, balancer.address, slots=2)
    connection = await balancer.first_connection()
    start = len(connection.frames)
    await connection.set_state(desired_state(gemma_model_path))
    fresh = await connection.wait_for_status(lambda s: s["state_application_status"] == "Fresh", start=start)
    assert fresh["slots_total"] == 0
    status = await loaded(connection, gemma_model_path)
    assert status["model_path"] == str(gemma_model_path)
    assert status["issues"] == [{"UnableToFindChatTemplate": {"model_path": str(gemma_model_path)}}]
    assert status["uses_chat_template_override"] is False

    await connection.request("m-1", "GetModelMetadata")
    metadata = (await connection.answer_to("m-1"))["ModelMetadata"]["metadata"]
    assert metadata["general.architecture"] == "gemma3"

    embeddings = {
        "GenerateEmbeddingBatch": {"input_batch": [{"id": "d-1", "content": "Hi"}], "normalization_method": "None"}
    }
    await connection.request("e-1", embeddings)
    assert await connection.results_of("e-1") == [{"Embedding": "EmbeddingsDisabled"}]

    # One request: tokens with its id, then Done.
    await connection.request("r-1", raw_prompt(6))
    results = await connection.results_of("r-1")
    assert all(is_token(payload) for payload in results[:-1]) and len(results) >= 2
    assert 1 <= done_usage(results[-1])["content_tokens"] <= 6
    frames = [frame for frame in connection.frames if frame.get("Response", {}).get("request_id") == "r-1"]
    assert all(frame["Response"]["generated_by"] is None for frame in frames)

    # Two at once on two slots.
    start = len(connection.frames)
    await connection.request("r-2", raw_prompt(6))
    await connection.request("r-3", raw_prompt(6, "Once upon a time"))
    for request_id in ("r-2", "r-3"):
        assert done_usage((await connection.results_of(request_id))[-1])["content_tokens"] >= 1
    await connection.wait_for_status(lambda s: s["slots_processing"] == 2, start=start)

    # StopRespondingTo ends a long generation early with Done and frees the slot.
    await connection.request("r-4", raw_prompt(900, "Write a very long story about a dragon."))
    await connection.wait_for(lambda frame: frame.get("Response", {}).get("request_id") == "r-4")
    await connection.request("r-4", raw_prompt(4))  # a duplicate of an in-flight id is refused
    refused = await connection.wait_for(lambda frame: frame.get("Error", {}).get("request_id") == "r-4")
    assert connection.frames[refused]["Error"]["error"]["code"] == 400
    await connection.stop_responding_to("r-4")
    done = await connection.wait_for(lambda frame: is_terminal_for(frame, "r-4"), start=refused + 1)
    assert done_usage(payload_for(connection.frames[done], "r-4"))["content_tokens"] < 900
    start = len(connection.frames)
    await connection.wait_for_status(lambda s: s["slots_processing"] == 0, start=start)

    await connection.request("r-5", {"ContinueFromRawPrompt": {"grammar": None, "max_tokens": -1, "raw_prompt": "Hi"}})
    answer = await connection.answer_to("r-5")
    assert answer["Error"]["code"] == 400 and "max_tokens" in answer["Error"]["description"]

    # The link drops mid-generation: the request is cancelled, the agent re-registers with
    # its slots free, and both slots serve again.
    await connection.request("r-6", raw_prompt(900, "Write a very long story about a knight."))
    await connection.wait_for(lambda frame: frame.get("Response", {}).get("request_id") == "r-6")
    await connection.drop()
    second = await balancer.next_connection(after=1, timeout=5)
    assert second.agent_id == connection.agent_id
    registration = await second.wait_for_status(lambda s: True)
    assert registration["slots_total"] == 2 and registration["state_application_status"] == "Applied"
    await second.wait_for_status(lambda s: s["slots_processing"] == 0)
    await second.set_state(desired_state(gemma_model_path))  # the same state again: no reload
    await second.request("r-7", raw_prompt(3))
    await second.request("r-8", raw_prompt(3, "Once upon a time"))
    for request_id in ("r-7", "r-8"):
        assert done_usage((await second.results_of(request_id))[-1])["content_tokens"] >= 1
    assert all(s["slots_total"] == 2 for f in second.frames if (s := snapshot_of(f)) is not None)


async def test_batches_the_replies_of_one_engine_step_only_when_the_balancer_offers_it(
    nursery: trio.Nursery, gemma_model_path: Path
) -> None:
    for offered in (False, True):
        fake = ScriptedFakeBalancer(offer_reply_batching=offered)
        await nursery.start(fake.serve)
        await start_agent(nursery, fake.address, slots=2)
        connection = await fake.first_connection()
        await loaded(connection, gemma_model_path)
        first_frame = len(connection.frame_sizes)
        await connection.request("b-1", raw_prompt(12))
        await connection.request("b-2", raw_prompt(12, "Once upon a time"))
        for request_id in ("b-1", "b-2"):
            results = await connection.results_of(request_id)
            assert all(is_token(payload) for payload in results[:-1])
            assert done_usage(results[-1])["content_tokens"] == len(results) - 1
        sizes = connection.frame_sizes[first_frame:]
        if offered:
            assert max(sizes) >= 2, f"the two slots' tokens of one step should share a frame: {sizes}"
        else:
            assert set(sizes) == {1}, "a balancer that does not offer batching gets one message per frame"


async def test_reports_its_prompt_state_cache_only_to_a_balancer_that_offers_status_extensions(
    nursery: trio.Nursery, gemma_model_path: Path
) -> None:
    conversation = ", ".join(str(number) for number in range(100, 130)) + ","
    continued = ", ".join(str(number) for number in range(100, 140)) + ","
    for offered, cache_ram_mib in ((False, 64), (True, 64), (True, 0)):
        fake = ScriptedFakeBalancer(offer_status_extensions=offered)
        await nursery.start(fake.serve)
        await start_agent(nursery, fake.address, slots=1, cache_ram_mib=cache_ram_mib)
        connection = await fake.first_connection()
        await loaded(connection, gemma_model_path, slots=1)
        for request_id, prompt in (("c-1", conversation), ("c-2", ", ".join(str(number) for number in range(5000, 5030)) + ",")):
            await connection.request(request_id, raw_prompt(6, prompt))
            await connection.results_of(request_id)
        # The only slot was taken by c-2: the conversation of c-1 comes back from the cache.
        await connection.request("c-3", raw_prompt(6, continued))
        cached = done_usage((await connection.results_of("c-3"))[-1])["cached_prompt_tokens"]
        start = len(connection.frames)
        status = await connection.wait_for_status(lambda s: True, start=start)
        if not offered:
            assert cached > 100
            assert not any("cache_states" in s for f in connection.frames if (s := snapshot_of(f)) is not None)
        elif cache_ram_mib:
            assert cached > 100
            assert status["cache_states"] == 2 and 0 < status["cache_used_bytes"] <= status["cache_limit_bytes"]
            assert status["cache_limit_bytes"] == 64 * 2**20
        else:
            assert cached <= 1  # at most the BOS token, which every prompt shares with the slot
            assert (status["cache_states"], status["cache_used_bytes"], status["cache_limit_bytes"]) == (0, 0, 0)


def test_a_bad_cache_ram_mib_is_refused_with_the_reason() -> None:
    for value, reason in (("-1", "expected 0 or more, got -1"), ("lots", "expected a whole number, got 'lots'")):
        result = subprocess.run(
            [sys.executable, "-m", "paddler_trio", "agent", "--management-addr", "127.0.0.1:8060", "--slots", "1",
             "--cache-ram-mib", value],
            capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 2
        assert f"argument --cache-ram-mib: {reason}" in result.stderr


async def test_reports_load_failures_with_paddlers_progression_and_recovers(
    nursery: trio.Nursery, balancer: ScriptedFakeBalancer, gemma_model_path: Path, tmp_path: Path
) -> None:
    await start_agent(nursery, balancer.address, slots=2)
    connection = await balancer.first_connection()

    missing = str(tmp_path / "missing.gguf")
    start = len(connection.frames)
    await connection.set_state(desired_state(missing))
    for expected in ("Fresh", "AttemptedAndRetrying", "Stuck"):
        status = await connection.wait_for_status(
            lambda s: s["state_application_status"] == expected and s["issues"] != [], start=start
        )
        assert status["issues"] == [{"ModelFileDoesNotExist": {"model_path": missing}}]
        assert status["slots_total"] == 0

    corrupt = tmp_path / "corrupt.gguf"
    with open(gemma_model_path, "rb") as model:
        corrupt.write_bytes(model.read(2**20))  # a real GGUF header, cut short
    start = len(connection.frames)
    await connection.set_state(desired_state(corrupt))
    await connection.wait_for_status(
        lambda s: s["issues"] == [{"ModelCannotBeLoaded": {"model_path": str(corrupt)}}], start=start
    )

    status = await loaded(connection, gemma_model_path)
    assert status["issues"] == [{"UnableToFindChatTemplate": {"model_path": str(gemma_model_path)}}]
    assert status["model_path"] == str(gemma_model_path)


async def test_reload_reports_no_slots_first_and_lets_in_flight_requests_finish(
    nursery: trio.Nursery, balancer: ScriptedFakeBalancer, gemma_model_path: Path
) -> None:
    await start_agent(nursery, balancer.address, slots=2)
    connection = await balancer.first_connection()
    await loaded(connection, gemma_model_path)

    await connection.request("r-1", raw_prompt(40, "Write a long story about a dragon."))
    await connection.wait_for(lambda frame: frame.get("Response", {}).get("request_id") == "r-1")
    start = len(connection.frames)
    await connection.set_state(desired_state(gemma_model_path, chat_template_override=TEMPLATE))
    drained = await connection.wait_for(reports_no_slots, start=start)
    assert snapshot_of(connection.frames[drained])["slots_processing"] == 1
    # As Paddler: the override asked for is the one the agent reports, already during the drain.
    await connection.request("t-0", "GetChatTemplateOverride")
    assert await connection.answer_to("t-0") == {"ChatTemplateOverride": {"content": TEMPLATE}}
    done = await connection.wait_for(
        lambda frame: frame.get("Response", {}).get("request_id") == "r-1"
        and "Done" in frame["Response"]["response"].get("GeneratedToken", {}),
        start=start,
    )
    assert drained < done, "the agent must report no slots before its in-flight request ends"
    assert done_usage(connection.frames[done]["Response"]["response"])["content_tokens"] == 40

    status = await connection.wait_for_status(
        lambda s: s["state_application_status"] == "Applied" and s["slots_total"] == 2, start=done
    )
    assert status["uses_chat_template_override"] is True and status["issues"] == []
    await connection.request("t-1", "GetChatTemplateOverride")
    assert await connection.answer_to("t-1") == {"ChatTemplateOverride": {"content": TEMPLATE}}
    conversation = {
        "ContinueFromConversationHistory": {
            "add_generation_prompt": True,
            "conversation_history": [{"role": "user", "content": "Say hello"}],
            "enable_thinking": False,
            "grammar": None,
            "max_tokens": 4,
            "tools": [],
        }
    }
    await connection.request("c-1", conversation)
    assert done_usage((await connection.results_of("c-1"))[-1])["content_tokens"] >= 1

    # A template that does not compile is reported; raw prompts are still served.
    start = len(connection.frames)
    await connection.set_state(desired_state(gemma_model_path, chat_template_override="{% if %}"))
    drained = await connection.wait_for(reports_no_slots, start=start)
    status = await connection.wait_for_status(
        lambda s: s["state_application_status"] == "Applied" and s["slots_total"] == 2, start=drained
    )
    [issue] = status["issues"]
    assert issue["ChatTemplateDoesNotCompile"]["template_content"] == "{% if %}"
    assert issue["ChatTemplateDoesNotCompile"]["model_path"] == {"model_path": str(gemma_model_path)}
    await connection.request("r-2", raw_prompt(3))
    assert done_usage((await connection.results_of("r-2"))[-1])["content_tokens"] >= 1


async def test_serves_embedding_batches_in_embeddings_mode(
    nursery: trio.Nursery, balancer: ScriptedFakeBalancer, gemma_model_path: Path
) -> None:
    await start_agent(nursery, balancer.address, slots=2, name="embedder")
    connection = await balancer.first_connection()
    await connection.set_state(desired_state(gemma_model_path, enable_embeddings=True))
    status = await connection.wait_for_status(lambda s: s["state_application_status"] == "Applied" and s["slots_total"])
    assert status["issues"] == []  # no chat template is needed in embeddings mode

    documents = [
        {"id": f"doc-{index}", "content": f"Document {index} is about topic {index * 7}."} for index in range(3)
    ]
    await connection.request(
        "e-1", {"GenerateEmbeddingBatch": {"input_batch": documents, "normalization_method": "L2"}}
    )
    results = await connection.results_of("e-1")
    assert results[-1] == {"Embedding": "Done"}
    embeddings = [payload["Embedding"]["Embedding"] for payload in results[:-1]]
    assert sorted(embedding["source_document_id"] for embedding in embeddings) == ["doc-0", "doc-1", "doc-2"]
    assert all(len(embedding["embedding"]) == 640 for embedding in embeddings)

    await connection.request("r-1", raw_prompt(3))
    [disabled] = await connection.results_of("r-1")
    assert disabled["GeneratedToken"] == {  # Paddler's agent names itself in this refusal
        "TokenGenerationDisabled": "embedder: token generation is disabled because this agent is running in embeddings-only mode"
    }


@asynccontextmanager
async def agent_process(address: str, log_path: Path, *extra: str) -> AsyncIterator[trio.Process]:
    """`python -m paddler_trio agent` against the fake balancer at `address`, output in `log_path`."""
    with open(log_path, "wb") as log:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "paddler_trio", "agent", "--management-addr", address,
             "--slots", "1", "--threads", str(THREADS), "--name", "sub", *extra],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[2],
            env={**os.environ, "PADDLER_LOG": "info"},
        )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@asynccontextmanager
async def agent_streaming(
    balancer: ScriptedFakeBalancer, model: Path, log_path: Path, max_tokens: int, *flags: str
) -> AsyncIterator[tuple[trio.Process, AgentConnection]]:
    """An agent process with one slot, streaming request "r-1" (`max_tokens` long) to the fake
    balancer, from its first token on."""
    async with agent_process(balancer.address, log_path, *flags) as process:
        connection = await balancer.first_connection()
        await loaded(connection, model, slots=1)
        await connection.request("r-1", raw_prompt(max_tokens, "Write a very long story about a dragon."))
        await connection.wait_for(lambda frame: frame.get("Response", {}).get("request_id") == "r-1")
        yield process, connection


async def test_sigterm_drains_the_request_in_flight_then_deregisters_and_exits_0(
    balancer: ScriptedFakeBalancer, gemma_model_path: Path, tmp_path: Path
) -> None:
    """What an autoscaler's scale-down or a rolling update does: the request streaming when
    SIGTERM arrives still gets every token and Done; the agent reports no slots meanwhile, so
    the balancer sends it nothing new."""
    log_path = tmp_path / "agent.log"
    async with agent_streaming(balancer, gemma_model_path, log_path, 40) as (process, connection):
        signalled_at = len(connection.frames)

        process.send_signal(signal.SIGTERM)
        await connection.wait_for_status(lambda snapshot: snapshot["slots_total"] == 0, start=signalled_at)
        results = await connection.results_of("r-1")
        with trio.fail_after(15):
            returncode = await process.wait()
        with trio.fail_after(2):
            await connection.closed.wait()
        output = log_path.read_text(errors="replace")
        assert returncode == 0, output[-3000:]
        assert done_usage(results[-1])["content_tokens"] == 40
        assert sum(is_token(payload) for payload in results) == 40
        assert connection.frames[-1] == {"Notification": "DeregisterAgent"}, connection.frames[-3:]
        assert connection.socket.closed is not None and connection.socket.closed.code == 1000
        assert "draining" in output and "deregistered from the balancer" in output
        assert "Traceback" not in output


async def test_the_grace_period_bounds_the_drain(
    balancer: ScriptedFakeBalancer, gemma_model_path: Path, tmp_path: Path
) -> None:
    log_path = tmp_path / "agent.log"
    async with agent_streaming(balancer, gemma_model_path, log_path, 2000, "--shutdown-grace-period", "300") as (process, connection):

        process.send_signal(signal.SIGTERM)
        started = trio.current_time()
        with trio.fail_after(10):
            returncode = await process.wait()
        output = log_path.read_text(errors="replace")
        assert returncode == 0, output[-3000:]
        assert trio.current_time() - started < 8
        assert "shutdown grace period (0.3 s) is over: stopping 1 requests still in flight" in output
        assert connection.frames[-1] == {"Notification": "DeregisterAgent"}, connection.frames[-3:]


@pytest.mark.parametrize(("second", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
async def test_a_second_signal_during_the_drain_exits_at_once_without_a_traceback(
    balancer: ScriptedFakeBalancer, gemma_model_path: Path, tmp_path: Path, second: signal.Signals, code: int
) -> None:
    log_path = tmp_path / "agent.log"
    async with agent_streaming(balancer, gemma_model_path, log_path, 2000) as (process, connection):
        signalled_at = len(connection.frames)
        process.send_signal(signal.SIGTERM)
        await connection.wait_for_status(lambda snapshot: snapshot["slots_total"] == 0, start=signalled_at)

        process.send_signal(second)
        with trio.fail_after(5):
            returncode = await process.wait()
        output = log_path.read_text(errors="replace")
        assert returncode == code, output[-3000:]
        assert f"{second.name} again while shutting down: exiting now" in output
        assert "Traceback" not in output


async def test_a_native_crash_prints_the_signal_and_the_python_stack(
    balancer: ScriptedFakeBalancer, tmp_path: Path
) -> None:
    """A crash inside llama.cpp kills the agent without a Python exception; faulthandler still
    tells the operator which signal and where (docs/operations.md). SIGSEGV sent from outside
    stands in for one raised by llama.cpp."""
    log_path = tmp_path / "agent.log"
    async with agent_process(balancer.address, log_path) as process:
        await balancer.first_connection()
        process.send_signal(signal.SIGSEGV)
        with trio.fail_after(10):
            returncode = await process.wait()
        output = log_path.read_text(errors="replace")
        assert returncode == -signal.SIGSEGV, output[-3000:]
        assert "Fatal Python error: Segmentation fault" in output, output[-3000:]
        assert 'File "' in output.split("Fatal Python error: Segmentation fault", 1)[1]
