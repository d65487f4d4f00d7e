"""How the llama-server monitor reads llama-server's answers (the statuses and bodies that a real
llama-server is hard to make give on demand; tests/integration/test_llama_server_agent.py drives a
real one)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import trio

from paddler_trio.agent.llamacpp_monitor import LlamaServerModel, LlamaServerMonitor, PollOutcome
from paddler_trio.agent.status import AgentStatus
from paddler_trio.cli_values import socket_address

ADDR = "127.0.0.1:8080"


def monitor(status: AgentStatus | None = None, api_key: str | None = None) -> LlamaServerMonitor:
    return LlamaServerMonitor(
        status or AgentStatus(desired_slots_total=0),
        local_addr=socket_address(ADDR),
        external_addr=socket_address("10.0.0.5:8080"),
        api_key=api_key,
        interval=1.0,
    )


def answering(routes: dict[str, tuple[int, Any]], seen: list[httpx.Request] | None = None) -> httpx.AsyncClient:
    def handle(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        status, body = routes.get(request.url.path, (404, {"error": {"message": "File Not Found"}}))
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.Response(status, content=content)

    return httpx.AsyncClient(base_url=f"http://{ADDR}", transport=httpx.MockTransport(handle))


SLOTS = [{"id": 0, "is_processing": True, "n_ctx": 1024}, {"id": 1, "is_processing": False, "n_ctx": 1024}]


async def poll(routes: dict[str, tuple[int, Any]]) -> PollOutcome:
    async with answering(routes) as client:
        return await monitor().poll(client)


def issue_of(outcome: PollOutcome) -> tuple[str, str]:
    assert outcome.issue is not None
    assert outcome.issue.llamacpp_addr == ADDR  # type: ignore[union-attr]
    return type(outcome.issue).__name__, outcome.issue.description  # type: ignore[union-attr]


async def test_slots_and_the_model_from_props() -> None:
    outcome = await poll({"/slots": (200, SLOTS), "/props": (200, {"model_alias": "qwen", "model_path": "/m/q.gguf"})})
    assert outcome == PollOutcome(slots_total=2, slots_processing=1, model=LlamaServerModel("qwen", "/m/q.gguf"))


async def test_the_model_from_v1_models_when_props_does_not_name_it() -> None:
    outcome = await poll({"/slots": (200, SLOTS), "/v1/models": (200, {"object": "list", "data": [{"id": "old-server"}]})})
    assert outcome.model == LlamaServerModel("old-server", None)
    assert (await poll({"/slots": (200, SLOTS)})).model == LlamaServerModel(None, None)


async def test_loading_model_is_its_own_issue() -> None:
    name, description = issue_of(
        await poll({"/slots": (503, {"error": {"message": "Loading model", "type": "unavailable_error", "code": 503}})})
    )
    assert name == "LlamaServerIsLoadingModel"
    assert description == f"llama-server at {ADDR} is loading its model (HTTP 503: Loading model)"


async def test_other_statuses_and_bodies_are_unexpected_answers() -> None:
    # Router mode (no -m) wants ?model= on /slots.
    name, description = issue_of(await poll({"/slots": (400, {"error": {"message": "model name is missing"}})}))
    assert name == "LlamaServerAnsweredUnexpectedly"
    assert "HTTP 400: model name is missing" in description
    for body in ({"slots": []}, [{"id": 0}], b"<html>"):
        name, description = issue_of(await poll({"/slots": (200, body)}))
        assert name == "LlamaServerAnsweredUnexpectedly"
        assert "other than a list of slots" in description


async def test_the_api_key_goes_to_every_request() -> None:
    seen: list[httpx.Request] = []
    async with answering({"/slots": (200, SLOTS), "/props": (200, {"model_alias": "q"})}, seen) as client:
        client.headers["Authorization"] = "Bearer k"  # as `run` sets it
        await monitor(api_key="k").poll(client)
    assert [request.url.path for request in seen] == ["/slots", "/props"]
    assert all(request.headers["Authorization"] == "Bearer k" for request in seen)


async def test_the_status_follows_the_polls() -> None:
    status = AgentStatus(desired_slots_total=0)
    watcher = monitor(status)
    routes: dict[str, tuple[int, Any]] = {"/slots": (200, SLOTS), "/props": (200, {"model_alias": "qwen", "model_path": "/q"})}
    report: Callable[[PollOutcome], None] = watcher._report  # what `run` does with each poll
    async with answering(routes) as client:
        report(await watcher.poll(client))
        snapshot = status.snapshot()
        assert (snapshot.slots_total, snapshot.desired_slots_total, snapshot.slots_processing, snapshot.model_path) == (2, 2, 1, "/q")
        assert snapshot.llama_server is not None
        assert (snapshot.llama_server.external_llamacpp_addr, snapshot.llama_server.model_name) == ("10.0.0.5:8080", "qwen")
        routes["/slots"] = (401, {"error": {"message": "Invalid API Key"}})
        report(await watcher.poll(client))
    snapshot = status.snapshot()
    assert (snapshot.slots_total, snapshot.slots_processing, snapshot.model_path) == (0, 0, None)
    assert [type(issue).__name__ for issue in snapshot.issues] == ["LlamaServerRefusedApiKey"]


async def test_an_unreachable_server_says_why() -> None:
    with trio.socket.socket() as probe:  # a port nobody listens on
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    watcher = LlamaServerMonitor(
        AgentStatus(desired_slots_total=0),
        local_addr=socket_address(f"127.0.0.1:{port}"),
        external_addr=socket_address(f"127.0.0.1:{port}"),
        api_key=None,
        interval=1.0,
    )
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        outcome = await watcher.poll(client)
    assert type(outcome.issue).__name__ == "LlamaServerIsUnreachable"
    assert "Connection refused" in outcome.issue.description  # type: ignore[union-attr]
