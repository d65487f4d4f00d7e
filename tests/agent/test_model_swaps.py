"""Desired-state changes on a running agent (real Gemma model, scripted fake balancer):
what reloads and what does not, requests caught by a swap, Url sources with progress,
issues that clear once fixed."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
import trio

from paddler_trio.protocol import InferenceParameters, unstructure
from tests.agent.scripted_fake_balancer import ScriptedFakeBalancer, snapshot_of
from tests.agent.test_agent import (
    desired_state,
    done_usage,
    loaded,
    raw_prompt,
    reports_no_slots,
    start_agent,
)
from tests.model_file_server import ModelFileServer

LOADED = "loaded with"


def loads_logged(caplog: pytest.LogCaptureFixture) -> int:
    return sum(1 for record in caplog.records if record.name.endswith("reconciliation") and LOADED in record.message)


@pytest.fixture
async def balancer(nursery: trio.Nursery) -> ScriptedFakeBalancer:
    fake = ScriptedFakeBalancer()
    await nursery.start(fake.serve)
    return fake


@pytest.fixture
def served_gemma(gemma_model_path: Path) -> Iterator[ModelFileServer]:
    server = ModelFileServer(files={"/gemma.gguf": gemma_model_path})
    with server.running():
        yield server


async def test_only_changes_the_engine_uses_reload_it(
    nursery: trio.Nursery, balancer: ScriptedFakeBalancer, gemma_model_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="paddler_trio.agent.reconciliation")
    await start_agent(nursery, balancer.address, slots=2)
    connection = await balancer.first_connection()
    await loaded(connection, gemma_model_path)
    assert loads_logged(caplog) == 1

    # The balancer's fan-out cap and the image size are not the engine's business: no reload.
    state = desired_state(gemma_model_path)
    state["inference_parameters"]["embedding_batch_size"] = 7
    state["inference_parameters"]["image_resize_to_fit"] = 99
    start = len(connection.frames)
    await connection.set_state(state)
    await connection.wait_for_status(lambda s: s["state_application_status"] == "Applied", start=start)
    await connection.set_state(state)  # the same state again (e.g. after a reconnect)
    await trio.sleep(0.5)  # a no-op sends nothing to wait for: a reload would start within this
    assert not any(reports_no_slots(frame) for frame in connection.frames[start:])
    assert loads_logged(caplog) == 1

    # A sampling parameter, the context size, the template override: each one reloads.
    changes = [
        ("temperature", lambda s: s["inference_parameters"].__setitem__("temperature", 0.5)),
        ("context_size", lambda s: s["inference_parameters"].__setitem__("context_size", 1024)),
        ("override", lambda s: s.__setitem__("chat_template_override", {"content": "{{ messages }}"})),
    ]
    for count, (name, change) in enumerate(changes, start=2):
        change(state)
        start = len(connection.frames)
        await connection.set_state(state)
        drained = await connection.wait_for(reports_no_slots, start=start)
        await connection.wait_for_status(
            lambda s: s["state_application_status"] == "Applied" and s["slots_total"] == 2, start=drained
        )
        assert loads_logged(caplog) == count, name


async def test_a_request_sent_just_before_the_balancer_learns_of_a_swap_waits_for_the_new_model(
    nursery: trio.Nursery, balancer: ScriptedFakeBalancer, gemma_model_path: Path
) -> None:
    await start_agent(nursery, balancer.address, slots=2)
    connection = await balancer.first_connection()
    await loaded(connection, gemma_model_path)
    start = len(connection.frames)
    await connection.set_state(
        desired_state(gemma_model_path) | {"inference_parameters": _parameters(context_size=1024)}
    )
    await connection.wait_for(reports_no_slots, start=start)
    # The agent has no engine now (drained, reloading); a balancer that had not seen the
    # snapshot yet still sends it a request: served by the new engine, not refused.
    await connection.request("late-1", raw_prompt(3))
    results = await connection.results_of("late-1")
    assert done_usage(results[-1])["content_tokens"] == 3
    assert all("Error" not in result for result in results)


async def test_a_url_source_downloads_with_progress_then_loads_and_a_broken_url_clears_when_fixed(
    nursery: trio.Nursery,
    balancer: ScriptedFakeBalancer,
    served_gemma: ModelFileServer,
    gemma_model_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PADDLER_CACHE_DIR", str(tmp_path / "cache"))
    await start_agent(nursery, balancer.address, slots=2)
    connection = await balancer.first_connection()

    missing = served_gemma.url("/missing.gguf")
    start = len(connection.frames)
    await connection.set_state(desired_state({"Url": {"url": missing}}))
    status = await connection.wait_for_status(lambda s: s["issues"] != [], start=start)
    assert status["issues"] == [{"ModelDoesNotExistAtUrl": {"model_path": missing}}]
    assert status["slots_total"] == 0

    served_gemma.chunk_delay["/gemma.gguf"] = 0.0005  # slow enough to see progress
    url = served_gemma.url("/gemma.gguf")
    start = len(connection.frames)
    await connection.set_state(desired_state({"Url": {"url": url}}))
    size = gemma_model_path.stat().st_size
    downloading = await connection.wait_for_status(lambda s: s["download_filename"] == "gemma.gguf", start=start)
    assert downloading["download_total"] == size and downloading["download_indeterminate"] is False
    assert downloading["issues"] == []  # the failure of the previous desired state is gone
    status = await connection.wait_for_status(
        lambda s: s["state_application_status"] == "Applied" and s["slots_total"] == 2, start=start, timeout=120
    )
    cached = tmp_path / "cache" / "downloaded-models" / hashlib.sha256(url.encode()).hexdigest()
    assert status["model_path"] == str(cached)
    assert (status["download_filename"], status["download_current"], status["download_total"]) == (None, 0, 0)
    progress = [
        snapshot["download_current"]
        for frame in connection.frames[start:]
        if (snapshot := snapshot_of(frame)) is not None and snapshot["download_filename"] == "gemma.gguf"
    ]
    assert len(progress) >= 2 and progress == sorted(progress)
    await connection.request("r-1", raw_prompt(3))
    assert done_usage((await connection.results_of("r-1"))[-1])["content_tokens"] == 3


def _parameters(**changes: object) -> dict[str, object]:
    parameters = attrs.evolve(InferenceParameters.deterministic(), context_size=2048, n_batch=512)
    return unstructure(attrs.evolve(parameters, **changes))
