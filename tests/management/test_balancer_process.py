"""`paddler balancer` as a real process: start-up refusals, readiness, and SIGTERM shutdown."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys

import httpx
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from tests.balancer_process import balancer_process
from tests.proxy.scripted_fake_agent import ScriptedFakeAgent
from tests.waiting import wait_until

def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "paddler_trio", "balancer", *args], capture_output=True, text=True, timeout=30
    )


def test_relative_state_database_path_gets_the_absolute_hint(tmp_path: object) -> None:
    result = run_cli("--state-database", "file://state.json")
    assert result.returncode == 2
    assert "must be absolute" in result.stderr
    assert "file:///" in result.stderr and "state.json" in result.stderr


def test_bad_flag_values_are_refused_by_the_parser() -> None:
    result = run_cli("--buffered-request-timeout", "1.5s")
    assert result.returncode == 2
    assert "whole milliseconds" in result.stderr
    result = run_cli("--max-buffered-requests", "-1")
    assert result.returncode == 2
    result = run_cli("--routing-policy", "fastest")
    assert result.returncode == 2
    assert "'cache-aware', 'least-busy'" in result.stderr


def test_help_lists_every_flag_of_paddler() -> None:
    result = run_cli("--help")
    for flag in (
        "--buffered-request-timeout", "--compat-openai-addr", "--inference-addr", "--inference-item-timeout",
        "--inference-cors-allowed-host", "--management-addr", "--management-cors-allowed-host",
        "--max-buffered-requests", "--routing-policy", "--state-database", "--statsd-addr", "--statsd-prefix",
        "--statsd-reporting-interval", "--web-admin-panel-addr",
    ):  # fmt: skip
        assert flag in result.stdout


async def test_sigterm_without_a_grace_period_answers_open_streams_and_exits_within_five_seconds() -> None:
    """Paddler's shutdown: streams end at once with the 503 envelope, sockets with 1001."""
    async with balancer_process("--shutdown-grace-period", "0") as balancer:
        async with trio.open_nursery() as nursery:
            agent = ScriptedFakeAgent(balancer.management, tokens=tuple("abcdefghijklmnopqrstuvwxyz"), token_delay=0.2)
            await nursery.start(agent.run)
            ndjson_lines: list[dict] = []
            sse_lines: list[str] = []
            ws_close: list[int] = []
            sse_ended = trio.Event()

            async def stream_ndjson(http: httpx.AsyncClient) -> None:
                async with http.stream(
                    "POST",
                    f"http://{balancer.inference}/api/v1/continue_from_raw_prompt",
                    json={"raw_prompt": "Hi", "max_tokens": 30},
                ) as response:
                    async for line in response.aiter_lines():
                        if line:
                            ndjson_lines.append(json.loads(line))

            async def stream_sse(http: httpx.AsyncClient) -> None:
                async with http.stream("GET", f"http://{balancer.management}/api/v1/agents/stream") as response:
                    async for line in response.aiter_lines():
                        if line:
                            sse_lines.append(line)
                sse_ended.set()

            async def hold_socket() -> None:
                async with open_websocket_url(f"ws://{balancer.inference}/api/v1/inference_socket") as ws:
                    try:
                        while True:
                            await ws.get_message()
                    except ConnectionClosed as closed:
                        ws_close.append(closed.reason.code)

            async with httpx.AsyncClient(timeout=30) as http:
                nursery.start_soon(stream_ndjson, http)
                nursery.start_soon(stream_sse, http)
                nursery.start_soon(hold_socket)
                await wait_until(lambda: len(ndjson_lines) >= 2 and sse_lines, limit=10)
                started = trio.current_time()
                balancer.process.send_signal(signal.SIGTERM)
                with trio.fail_after(5):
                    returncode = await balancer.process.wait()
                elapsed = trio.current_time() - started
                nursery.cancel_scope.deadline = trio.current_time() + 5
        assert returncode == 0
        assert elapsed < 5
        assert ndjson_lines[-1]["Error"]["error"] == {"code": 503, "description": "balancer is shutting down"}
        assert ws_close == [1001]
        assert sse_ended.is_set()
        assert any("balancer stopped" in line for line in balancer.log)


async def test_sigterm_drains_a_streaming_request_refuses_new_ones_and_exits_0() -> None:
    """A rolling update of the balancer: the stream under way gets every token and Done, a
    request that arrives during the drain gets the 503 envelope at once, then the balancer exits 0."""
    tokens = tuple("abcdefghij")
    async with balancer_process() as balancer, httpx.AsyncClient(timeout=30) as http:
        async with trio.open_nursery() as nursery:
            agent = ScriptedFakeAgent(balancer.management, slots=2, tokens=tokens, token_delay=0.2)
            await nursery.start(agent.run)
            url = f"http://{balancer.inference}/api/v1/continue_from_raw_prompt"
            streamed: list[dict] = []

            async def stream() -> None:
                async with http.stream("POST", url, json={"raw_prompt": "Hi", "max_tokens": 30}) as response:
                    async for line in response.aiter_lines():
                        if line:
                            streamed.append(json.loads(line))

            nursery.start_soon(stream)
            await wait_until(lambda: len(streamed) >= 2, limit=10)
            balancer.process.send_signal(signal.SIGTERM)
            await wait_until(lambda: any("draining:" in line for line in balancer.log), limit=5)
            late = await http.post(url, json={"raw_prompt": "Hi", "max_tokens": 30})
            with trio.fail_after(10):
                returncode = await balancer.process.wait()
            nursery.cancel_scope.cancel()
        assert returncode == 0
        assert [message["Response"]["response"]["GeneratedToken"].get("ContentToken") for message in streamed[:-1]] == list(tokens)
        assert "Done" in streamed[-1]["Response"]["response"]["GeneratedToken"]
        assert json.loads(late.text)["Error"]["error"] == {"code": 503, "description": "balancer is shutting down"}
        assert not any("Traceback" in line for line in balancer.log), "\n".join(balancer.log)


async def test_a_second_signal_during_the_drain_exits_at_once_with_143() -> None:
    async with balancer_process() as balancer, httpx.AsyncClient(timeout=30) as http:
        async with trio.open_nursery() as nursery:
            agent = ScriptedFakeAgent(balancer.management, tokens=tuple("abcdefghij") * 10, token_delay=0.2)
            await nursery.start(agent.run)
            streamed: list[str] = []

            async def stream() -> None:
                url = f"http://{balancer.inference}/api/v1/continue_from_raw_prompt"
                # Exiting at once cuts the stream short: that is what a second signal asks for.
                with contextlib.suppress(httpx.RemoteProtocolError):
                    async with http.stream("POST", url, json={"raw_prompt": "Hi", "max_tokens": 200}) as response:
                        async for line in response.aiter_lines():
                            streamed.append(line)

            nursery.start_soon(stream)
            await wait_until(lambda: len(streamed) >= 1, limit=10)
            balancer.process.send_signal(signal.SIGTERM)
            await wait_until(lambda: any("draining:" in line for line in balancer.log), limit=5)
            balancer.process.send_signal(signal.SIGTERM)
            with trio.fail_after(5):
                returncode = await balancer.process.wait()
            nursery.cancel_scope.cancel()
        assert returncode == 143, "\n".join(balancer.log)
        assert any("SIGTERM again while shutting down: exiting now" in line for line in balancer.log)
        assert not any("Traceback" in line for line in balancer.log), "\n".join(balancer.log)


async def test_sigterm_with_an_open_sse_subscriber_exits_within_one_second() -> None:
    """Paddler's `balancer_shutdown_with_open_sse_subscriber_completes_within_one_second`."""
    async with balancer_process() as balancer, httpx.AsyncClient(timeout=30) as http:
        first_snapshot = trio.Event()

        async def subscribe() -> None:
            async with http.stream("GET", f"http://{balancer.management}/api/v1/buffered_requests/stream") as response:
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        first_snapshot.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(subscribe)
            with trio.fail_after(10):
                await first_snapshot.wait()
            started = trio.current_time()
            balancer.process.send_signal(signal.SIGTERM)
            with trio.fail_after(5):
                returncode = await balancer.process.wait()
            elapsed = trio.current_time() - started
            nursery.cancel_scope.cancel()
        assert returncode == 0
        assert elapsed < 1.0

