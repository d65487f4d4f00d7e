"""The management service (spec 4, 5, 8.1) against the real balancer and scripted fake agents."""

from __future__ import annotations

import json
import attrs
import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from paddler_trio import PADDLER_COMPATIBLE_VERSION
from paddler_trio.cli_values import socket_address
from paddler_trio.management import management_routes
from paddler_trio.protocol import (
    BalancerDesiredState,
    ChatTemplate,
    InferenceParameters,
    LlamaServerStatus,
    LocalToAgentModel,
    RegisterAgentNotification,
    StateApplicationStatus,
    to_json,
)
from tests.proxy.balancer_harness import BalancerUnderTest, running_balancer, wait_until
from tests.proxy.scripted_fake_agent import status_snapshot

DESIRED = "/api/v1/balancer_desired_state"


async def sse_events(http: httpx.AsyncClient, url: str, count: int, lines: list[str] | None = None) -> list[str]:
    """The first `count` SSE lines (`data: ...` events and `:` comments) of a stream; appended
    to `lines` as they come, when given, so that a test can wait for the subscription."""
    lines = [] if lines is None else lines
    with trio.fail_after(15):
        async with http.stream("GET", url) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            async for line in response.aiter_lines():
                if line:
                    lines.append(line)
                if len(lines) == count:
                    return lines
    return lines


async def test_health() -> None:
    async with running_balancer() as balancer:
        response = await balancer.http.get(f"{balancer.management}/health")
        assert (response.status_code, response.text) == (200, "OK")


async def test_agent_registration_is_listed_with_its_snapshot_and_gets_version_and_state() -> None:
    async with running_balancer() as balancer:
        agent = await balancer.add_agent(name="gpu-1", slots=3, agent_id="agent-xyz")
        assert agent.version_seen == PADDLER_COMPATIBLE_VERSION
        await wait_until(lambda: agent.set_states)
        assert agent.set_states[0] == BalancerDesiredState.default().to_agent_desired_state()
        (listed,) = await balancer.agents()
        assert listed == {
            "desired_slots_total": 3,
            "download_current": 0,
            "download_filename": None,
            "download_indeterminate": False,
            "download_total": 0,
            "id": "agent-xyz",
            "issues": [],
            "model_path": "/models/scripted-fake.gguf",
            "name": "gpu-1",
            "slots_processing": 0,
            "slots_total": 3,
            "state_application_status": "Applied",
            "uses_chat_template_override": False,
            # Ours: Paddler's clients ignore it.
            "kind": "engine",
        }


async def test_a_duplicate_agent_id_is_refused() -> None:
    async with running_balancer() as balancer:
        await balancer.add_agent(agent_id="twin")
        async with open_websocket_url(f"ws://{balancer.addresses.management}/api/v1/agent_socket/twin") as ws:
            await ws.get_message()  # Version
            register = {
                "Notification": {
                    "RegisterAgent": {
                        "name": None,
                        "slot_aggregated_status_snapshot": json.loads(
                            to_json(status_snapshot(slots=1, model_path="/m.gguf"))
                        ),
                    }
                }
            }
            await ws.send_message(json.dumps(register))
            try:
                with trio.fail_after(5):
                    await ws.get_message()
                raise AssertionError("the duplicate agent was not refused")
            except ConnectionClosed as closed:
                assert closed.reason.code == 1008
                assert "already registered" in closed.reason.reason
        assert len(await balancer.agents()) == 1


async def test_status_updates_apply_but_never_clobber_slots_processing() -> None:
    async with running_balancer() as balancer:
        agent = await balancer.add_agent(slots=2, frozen=True)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(balancer.raw_prompt)  # holds one slot on the frozen agent
            await wait_until(lambda: agent.requests)
            await agent.report_status(slots_total=4, model_path="/models/other.gguf", slots_processing=0)
            await wait_until(lambda: _listed_model(balancer, "/models/other.gguf"))
            (listed,) = await balancer.agents()
            assert listed["slots_total"] == 4
            assert listed["slots_processing"] == 1
            nursery.cancel_scope.cancel()


async def _listed_model(balancer: BalancerUnderTest, model_path: str) -> bool:
    return any(agent["model_path"] == model_path for agent in await balancer.agents())


async def test_agent_leaving_is_removed_from_the_pool() -> None:
    async with running_balancer() as balancer:
        agent = await balancer.add_agent()
        await agent.drop()
        await wait_until(lambda: _no_agents(balancer))


async def _no_agents(balancer: BalancerUnderTest) -> bool:
    return await balancer.agents() == []


async def test_desired_state_round_trip_and_broadcast() -> None:
    async with running_balancer() as balancer:
        agent = await balancer.add_agent()
        response = await balancer.http.get(f"{balancer.management}{DESIRED}")
        assert response.json() == json.loads(to_json(BalancerDesiredState.default()))
        state = BalancerDesiredState(
            chat_template_override=ChatTemplate("{{ messages }}"),
            inference_parameters=InferenceParameters.deterministic(),
            model=LocalToAgentModel("/models/new.gguf"),
            multimodal_projection=BalancerDesiredState.default().multimodal_projection,
            use_chat_template_override=False,
        )
        response = await balancer.http.put(f"{balancer.management}{DESIRED}", content=to_json(state))
        assert response.status_code == 204
        assert (await balancer.http.get(f"{balancer.management}{DESIRED}")).json() == json.loads(to_json(state))
        applicable = (await balancer.http.get(f"{balancer.management}/api/v1/balancer_applicable_state")).json()
        assert applicable["model"] == {"LocalToAgent": "/models/new.gguf"}
        assert applicable["chat_template_override"] is None  # dropped: use_chat_template_override is false
        assert "use_chat_template_override" not in applicable
        await wait_until(lambda: len(agent.set_states) == 2)
        assert agent.set_states[-1] == state.to_agent_desired_state()
        with_override = attrs.evolve(state, use_chat_template_override=True)
        await balancer.http.put(f"{balancer.management}{DESIRED}", content=to_json(with_override))
        await wait_until(lambda: len(agent.set_states) == 3)
        assert agent.set_states[-1].chat_template_override == ChatTemplate("{{ messages }}")


async def test_invalid_desired_states_are_refused_and_not_stored() -> None:
    async with running_balancer() as balancer:
        before = (await balancer.http.get(f"{balancer.management}{DESIRED}")).json()
        bad_parameters = json.loads(to_json(BalancerDesiredState.default()))
        bad_parameters["inference_parameters"]["embedding_batch_size"] = 0
        missing = json.loads(to_json(BalancerDesiredState.default()))
        del missing["use_chat_template_override"]
        cases = [
            (b"{nope", "invalid JSON"),
            (json.dumps(missing).encode(), 'missing field "use_chat_template_override"'),
            (json.dumps(bad_parameters).encode(), "Invalid inference parameters: embedding_batch_size must be greater"),
        ]
        for body, expected in cases:
            response = await balancer.http.put(f"{balancer.management}{DESIRED}", content=body)
            assert response.status_code == 400
            assert expected in response.text
        assert (await balancer.http.get(f"{balancer.management}{DESIRED}")).json() == before


async def test_proxied_agent_queries() -> None:
    async with running_balancer() as balancer:
        agent = await balancer.add_agent(agent_id="meta", metadata={"general.name": "fake"})
        response = await balancer.http.get(f"{balancer.management}/api/v1/agent/meta/model_metadata")
        assert (response.status_code, response.json()) == (200, {"metadata": {"general.name": "fake"}})
        response = await balancer.http.get(f"{balancer.management}/api/v1/agent/meta/chat_template_override")
        assert (response.status_code, response.text) == (200, "null")
        agent.chat_template = ChatTemplate("{{ x }}")
        response = await balancer.http.get(f"{balancer.management}/api/v1/agent/meta/chat_template_override")
        assert response.json() == {"content": "{{ x }}"}
        response = await balancer.http.get(f"{balancer.management}/api/v1/agent/nobody/model_metadata")
        assert response.status_code == 404
        assert response.text == 'Agent "nobody" is not registered'


async def test_proxied_query_to_a_silent_agent_times_out_with_504(monkeypatch: pytest.MonkeyPatch) -> None:
    assert management_routes.AGENT_ANSWER_TIMEOUT == 3.0
    monkeypatch.setattr(management_routes, "AGENT_ANSWER_TIMEOUT", 0.3)
    async with running_balancer() as balancer:
        agent = await balancer.add_agent(agent_id="mute")
        agent.metadata_delay = 10.0
        started = trio.current_time()
        response = await balancer.http.get(f"{balancer.management}/api/v1/agent/mute/model_metadata")
        assert response.status_code == 504
        assert "did not answer" in response.text
        assert 0.3 <= trio.current_time() - started < 2


async def test_proxied_query_to_an_agent_that_leaves_is_a_502() -> None:
    async with running_balancer() as balancer:
        agent = await balancer.add_agent(agent_id="leaving")
        agent.metadata_delay = 10.0
        result: list[httpx.Response] = []

        async def ask() -> None:
            result.append(await balancer.http.get(f"{balancer.management}/api/v1/agent/leaving/model_metadata"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask)
            await wait_until(lambda: agent.requests)
            await agent.drop()
        assert result[0].status_code == 502


async def test_buffered_requests_count_and_its_stream() -> None:
    async with running_balancer(buffered_request_timeout=30.0) as balancer:
        url = f"{balancer.management}/api/v1/buffered_requests/stream"
        events: list[str] = []

        async def watch() -> None:
            await sse_events(balancer.http, url, 3, events)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            await wait_until(lambda: events)  # subscribed: the snapshot on connect is in
            request_scope = trio.CancelScope()
            nursery.start_soon(_request_in_scope, balancer, request_scope)
            await wait_until(balancer.buffered)
            assert (await balancer.http.get(f"{balancer.management}/api/v1/buffered_requests")).json() == {
                "buffered_requests_current": 1
            }
            request_scope.cancel()
        assert events == [
            'data: {"buffered_requests_current":0}',
            'data: {"buffered_requests_current":1}',
            'data: {"buffered_requests_current":0}',
        ]


async def _request_in_scope(balancer: BalancerUnderTest, scope: trio.CancelScope) -> None:
    with scope:
        await balancer.raw_prompt()


async def test_agents_stream_sends_a_snapshot_on_connect_and_on_changes() -> None:
    async with running_balancer() as balancer:
        events: list[str] = []

        async def watch() -> None:
            await sse_events(balancer.http, f"{balancer.management}/api/v1/agents/stream", 2, events)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            await wait_until(lambda: events)  # subscribed: the snapshot on connect is in
            await balancer.add_agent(agent_id="streamed")
        assert events[0] == 'data: {"agents":[]}'
        assert json.loads(events[1].removeprefix("data: "))["agents"][0]["id"] == "streamed"


async def test_agents_and_their_stream_show_an_agent_watching_a_llama_server() -> None:
    """Its kind, llama-server's address and model name, and the busy slots llama-server reports."""
    snapshot = attrs.evolve(
        status_snapshot(slots=4, model_path="/srv/models/qwen.gguf"),
        slots_processing=2,
        state_application_status=StateApplicationStatus.FRESH,
        llama_server=LlamaServerStatus(external_llamacpp_addr="10.0.0.5:8080", model_name="qwen2.5-coder-0.5b"),
    )
    expected = {
        "kind": "llama_server",
        "llama_server": {"external_llamacpp_addr": "10.0.0.5:8080", "model_name": "qwen2.5-coder-0.5b"},
        "slots_processing": 2,
        "slots_total": 4,
    }
    async with running_balancer() as balancer:
        events: list[str] = []

        async def watch() -> None:
            await sse_events(balancer.http, f"{balancer.management}/api/v1/agents/stream", 2, events)

        async with (
            trio.open_nursery() as nursery,
            open_websocket_url(f"ws://{balancer.addresses.management}/api/v1/agent_socket/watcher") as ws,
        ):
            nursery.start_soon(watch)
            await wait_until(lambda: events)  # subscribed
            await ws.get_message()  # Version
            await ws.send_message(to_json(RegisterAgentNotification(name="watcher", slot_aggregated_status_snapshot=snapshot)))
            await wait_until(lambda: len(events) == 2)
            (listed,) = await balancer.agents()
        (streamed,) = json.loads(events[1].removeprefix("data: "))["agents"]
        assert streamed == listed
        assert {key: listed[key] for key in expected} == expected
        assert "legacy_status_stream" not in listed


async def test_sse_streams_send_keep_alive_comments(monkeypatch: pytest.MonkeyPatch) -> None:
    assert management_routes.SSE_KEEP_ALIVE_INTERVAL == 10.0
    monkeypatch.setattr(management_routes, "SSE_KEEP_ALIVE_INTERVAL", 0.05)
    async with running_balancer() as balancer:
        events = await sse_events(balancer.http, f"{balancer.management}/api/v1/agents/stream", 3)
        assert events == ['data: {"agents":[]}', ": keep-alive", ": keep-alive"]


async def test_shutdown_ends_sse_streams() -> None:
    async with running_balancer() as balancer:
        lines: list[str] = []

        async def watch() -> None:
            async with balancer.http.stream("GET", f"{balancer.management}/api/v1/agents/stream") as response:
                async for line in response.aiter_lines():
                    if line:
                        lines.append(line)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            await wait_until(lambda: lines)  # subscribed: the snapshot on connect is in
            started = trio.current_time()
            balancer.shutdown.trigger()
        assert trio.current_time() - started < 1.0
        assert lines == ['data: {"agents":[]}']


async def test_metrics_are_exactly_paddlers_three_gauges_until_a_token_is_relayed() -> None:
    async with running_balancer(statsd_prefix="paddler_") as balancer:
        await balancer.add_agent(slots=3, frozen=True)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(balancer.raw_prompt)
            await wait_until(balancer.slots_processing)
            response = await balancer.http.get(f"{balancer.management}/metrics")
            nursery.cancel_scope.cancel()
        assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8; escaping=values"
        assert response.text == (
            "# HELP paddler_slots_processing Number of processing slots\n"
            "# TYPE paddler_slots_processing gauge\n"
            "paddler_slots_processing 1\n"
            "\n"
            "# HELP paddler_slots_total Number of total slots\n"
            "# TYPE paddler_slots_total gauge\n"
            "paddler_slots_total 3\n"
            "\n"
            "# HELP paddler_requests_buffered Number of buffered requests\n"
            "# TYPE paddler_requests_buffered gauge\n"
            "paddler_requests_buffered 0\n"
        )


async def test_generated_tokens_counter_counts_relayed_tokens_also_of_departed_agents() -> None:
    async with running_balancer(statsd_prefix="paddler_") as balancer:
        agent = await balancer.add_agent(tokens=("a", "b", "c"))
        await balancer.raw_prompt()
        await balancer.raw_prompt()
        metrics = (await balancer.http.get(f"{balancer.management}/metrics")).text
        assert (
            "paddler_requests_buffered 0\n"
            "\n"
            "# HELP paddler_generated_tokens_total Tokens generated by agents and relayed to clients\n"
            "# TYPE paddler_generated_tokens_total counter\n"
            "paddler_generated_tokens_total 6\n"
        ) in metrics
        await agent.drop()

        async def agent_gone() -> bool:
            return not await balancer.agents()

        await wait_until(agent_gone)
        metrics = (await balancer.http.get(f"{balancer.management}/metrics")).text
        assert "paddler_generated_tokens_total 6\n" in metrics


async def test_prompt_token_counters_follow_the_agents_usage_reports() -> None:
    async with running_balancer(statsd_prefix="paddler_") as balancer:
        await balancer.add_agent(tokens=("a",), prompt_tokens=10, cached_prompt_tokens=4)
        await balancer.raw_prompt()
        await balancer.raw_prompt()
        metrics = (await balancer.http.get(f"{balancer.management}/metrics")).text
        assert metrics.endswith(
            "paddler_generated_tokens_total 2\n"
            "\n"
            "# HELP paddler_prompt_tokens_cached_total Prompt tokens served from the agents' prompt caches\n"
            "# TYPE paddler_prompt_tokens_cached_total counter\n"
            "paddler_prompt_tokens_cached_total 8\n"
            "\n"
            "# HELP paddler_prompt_tokens_prefilled_total Prompt tokens the agents prefilled\n"
            "# TYPE paddler_prompt_tokens_prefilled_total counter\n"
            "paddler_prompt_tokens_prefilled_total 12\n"
        )


async def test_statsd_reports_the_gauges_over_udp() -> None:
    with trio.socket.socket(type=trio.socket.SOCK_DGRAM) as udp:
        await udp.bind(("127.0.0.1", 0))
        port = udp.getsockname()[1]
        async with running_balancer(
            statsd_addr=socket_address(f"127.0.0.1:{port}"), statsd_reporting_interval=0.05
        ) as balancer:
            await balancer.add_agent(slots=2)
            packets: set[str] = set()
            with trio.fail_after(5):
                while "paddler_slots_total:2|g" not in packets:
                    packets.add((await udp.recv(1024)).decode())
            assert {"paddler_slots_processing:0|g", "paddler_requests_buffered:0|g"} <= packets


async def test_cors_headers_for_configured_origins_only() -> None:
    async with running_balancer(
        management_cors_allowed_hosts=("http://panel.example",),
        inference_cors_allowed_hosts=("http://app.example",),
    ) as balancer:
        allowed = await balancer.http.get(f"{balancer.management}/health", headers={"Origin": "http://panel.example"})
        assert allowed.headers["access-control-allow-origin"] == "http://panel.example"
        other = await balancer.http.get(f"{balancer.management}/health", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        preflight = await balancer.http.options(
            f"{balancer.inference}/api/v1/continue_from_raw_prompt",
            headers={
                "Origin": "http://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "http://app.example"
        assert preflight.headers["access-control-allow-methods"] == "DELETE, GET, OPTIONS, POST, PUT"
        assert preflight.headers["access-control-allow-headers"] == "Accept, Authorization, Content-Type"
        assert preflight.headers["access-control-max-age"] == "3600"
        refused = await balancer.http.options(
            f"{balancer.inference}/api/v1/continue_from_raw_prompt",
            headers={"Origin": "http://panel.example", "Access-Control-Request-Method": "POST"},
        )
        assert refused.status_code == 400


async def test_the_admin_panel_address_is_a_cors_origin_of_both_services() -> None:
    async with running_balancer(web_admin_panel_addr=socket_address("127.0.0.1:8062")) as balancer:
        for base in (balancer.management, balancer.inference):
            response = await balancer.http.get(f"{base}/health", headers={"Origin": "http://127.0.0.1:8062"})
            assert response.headers["access-control-allow-origin"] == "http://127.0.0.1:8062"
