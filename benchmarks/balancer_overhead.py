#!/usr/bin/env python3
"""Balancer overhead: what a request pays for going through `paddler balancer` + `paddler agent`,
and how many token messages one balancer process can forward.

Part `latency` (real engine, `--model gemma|qwen`, greedy sampling): the same workload, N
requests in flight on N slots, short distinct prompts, `--max-tokens` generated tokens,
sent (i) straight into an in-process `Engine` ("direct") and (ii) through a real balancer
and agent (subprocesses) over the HTTP NDJSON route ("ndjson": a lean HTTP/1.1 client on h11,
so that what is measured is the balancer and not the client library; "ndjson-httpx": the same
through httpx, on request) and over the inference WebSocket ("websocket", trio-websocket). The
engine and the agent get the same model, slots, threads and inference parameters, and neither
has a prompt state cache (the agent runs with `--cache-ram-mib 0`): saving a slot's state as a
new prompt takes the slot costs the prefill step about a millisecond here, which is the cache's
cost, not the balancer's, and with it the probes' repeated prompts would be cache hits. Every repeat runs each side once, rotating
which goes first; figures are medians over the repeats: time to first token p50/p99 (and
pooled over every request), aggregate tok/s, and for each balancer side the added TTFT and
the tok/s ratio against direct, paired by repeat. Both cores are shared: the balancer and
the agent's Python compete with llama.cpp's threads. `--threads 2,1` measures each thread
count in turn (with 1 thread the balancer has the other core to itself). Each run also
records, as percent of one core, the CPU time of what runs beside llama.cpp's threads: the
balancer, the agent's Python (its main thread) and this process's Python (clients and the
direct engine's scheduler); see `benchmarks/engine_interference.py` for what such CPU costs
the engine.

Because TTFT under that concurrent load swings by tens of milliseconds with the engine's step
phase, the latency part first measures an "isolated TTFT": for each balancer side in turn,
`--probe-requests` requests one at a time, the same prompt alternately on the direct engine
and on that side; the differences paired by prompt are the balancer's and agent's added TTFT
with the engine's own variance taken out (see `probe_ttft` for why pairs).

Part `paced` measures the balancer's CPU per engine step with nothing else running: a scripted
fast agent sends one frame of `--slots` tokens every `--paced-step-ms` (an engine decoding on
the CPU) to the lean clients of the latency part, `--paced-requests` requests of `--max-tokens`
tokens per run. The latency part's throughput ratio swings by a few percent with the machine's
neighbours; this figure moves only with the host's speed (about 10 % over a day here), so it
is the one to compare changes of the relay by, run before and after in the same session. CPU
time comes in 10 ms ticks: 0.026 ms per step at the default 32 requests. Each run also gives the
clients' CPU per step (this process) and the wake-ups per step (voluntary context switches) of
the balancer and of the clients: how often each had to be woken for a step's tokens.

Part `ceiling` first measures the relay round trip: `--round-trips` one-token requests, one at a
time, through the balancer to the scripted fast agent (whose own work is negligible), TTFT
p50/p99 per transport: what the balancer and the agent socket add, with no engine time to hide
it. Then the ceiling itself: one balancer process, one scripted fast agent (tests/proxy/scripted_fast_agent.py,
`--ceiling-slots` slots, `--ceiling-tokens` ContentTokens per request as fast as it can) and
`--ceiling-clients` concurrent clients in a separate process, over NDJSON and over the
inference WebSocket. Figures: token messages received by the clients per second of the
clients' wall time, the balancer's CPU% over that time (from /proc/<pid>/stat; 100 = one
core), its CPU time per message (the figure least disturbed by other load on the machine)
and its RSS (current and peak).

One JSON object goes to stdout and, unless `--no-save`, to
`benchmarks/results/balancer_overhead[-<label>]-<UTC timestamp>.json`; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs
import h11
import httpx
import trio
import trio_websocket

# The engine package loads llama_cpp first; it must come before numpy (see its docstring).
import paddler_trio.engine  # noqa: F401  (import order matters)

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # the cluster harness and the scripted fast agent live in tests/

from host_figures import (
    main_thread_cpu_seconds,
    process_cpu_seconds,
    process_memory_mib,
    process_wakeups,
)
from result_files import report_header, save_result

from paddler_trio.bundled_models import MODEL_ALIASES, ensure_model
from paddler_trio.engine.engine import Engine, EngineSettings
from paddler_trio.protocol import (
    ContentToken,
    ContinueFromRawPromptParams,
    GenerationDone,
    InferenceParameters,
    ReasoningToken,
    ToolCallToken,
    UndeterminableToken,
    is_terminal,
    structure,
)
from tests.integration.cluster import DETERMINISTIC_PARAMETERS, Cluster, wait_until

CONTEXT_SIZE = 4096
CLIENT_TIMEOUT_S = 600.0
PROBE_MAX_TOKENS = 4
CEILING_TRANSPORTS = ("ndjson", "websocket")
# Reuse a kept-alive connection only this long after it went idle, as httpx's pool does (the
# balancer keeps idle connections far longer: KEEP_ALIVE_TIMEOUT in nursery/balancer.py).
KEEP_ALIVE_REUSE_LIMIT = 5.0
AGENT_NAME = "bench"

PROMPTS: tuple[str, ...] = (
    "The old lighthouse keeper climbed the spiral stairs one last time before the storm, and",
    "Explain to a curious child why the sky is blue during the day and red at sunset:",
    "A short letter from a small-town baker to her customers, announcing a month away:",
    "The main differences between a city bicycle and a mountain bike are",
    "Once upon a time, in a village at the edge of a great forest, there lived a girl who",
    "To grow tomatoes on a balcony, a beginner should first",
    "The detective arrived at the quiet country house where the owner had vanished, and",
    "The printing press changed the way ideas spread across Europe because",
)


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def prompt_for(run_tag: str, index: int) -> str:
    """A distinct prompt per request; the tag in front keeps slot prompt caches out of the measure."""
    return f"[{run_tag}-{index}] {PROMPTS[index % len(PROMPTS)]}"


def percentile(values: Sequence[float], fraction: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median_or_none(values: Sequence[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return round(statistics.median(present), 3) if present else None


# --- part a: latency and throughput with the real engine ---------------------------------


@attrs.define
class RequestTiming:
    """time.perf_counter readings of one request."""

    issued: float
    first_token: float | None = None
    finished: float = math.nan
    generated_tokens: int = 0


class Side(Protocol):
    name: str

    async def generate(self, prompt: str, max_tokens: int, timing: RequestTiming) -> None: ...


_TOKEN_KINDS = (ContentToken, ReasoningToken, ToolCallToken, UndeterminableToken)


class DirectSide:
    """Requests straight into an in-process Engine."""

    name = "direct"

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def generate(self, prompt: str, max_tokens: int, timing: RequestTiming) -> None:
        params = ContinueFromRawPromptParams(raw_prompt=prompt, max_tokens=max_tokens)
        async with self._engine.continue_from_raw_prompt(params) as stream:
            async for result in stream:
                if isinstance(result, _TOKEN_KINDS):
                    if timing.first_token is None:
                        timing.first_token = time.perf_counter()
                elif isinstance(result, GenerationDone):
                    timing.generated_tokens = result.usage.completion_tokens
                elif is_terminal(result):
                    raise RuntimeError(f"the engine ended a request with {result!r}")


def _observe(message: dict[str, Any], timing: RequestTiming) -> bool:
    """Record one client-bound message; True when it ends the request."""
    if "Error" in message:
        raise RuntimeError(f"the balancer answered with an error: {message['Error']}")
    result = message["Response"]["response"]["GeneratedToken"]
    if isinstance(result, dict) and "Done" in result:
        usage = result["Done"]["usage"]
        timing.generated_tokens = sum(
            usage[key] for key in ("content_tokens", "reasoning_tokens", "tool_call_tokens", "undeterminable_tokens")
        )
        return True
    if isinstance(result, dict) and next(iter(result)) in {cls.__name__ for cls in _TOKEN_KINDS}:
        if timing.first_token is None:
            timing.first_token = time.perf_counter()
        return False
    raise RuntimeError(f"the balancer streamed an unexpected result: {result!r}")


class NdjsonSide:
    """POST /api/v1/continue_from_raw_prompt on the balancer over keep-alive HTTP/1.1 connections
    parsed with h11 (one connection per request in flight): a lean client, so that the figure is
    the balancer's and not the client library's. `HttpxNdjsonSide` is the same through httpx."""

    name = "ndjson"

    def __init__(self, inference_port: int) -> None:
        self._port = inference_port
        # Kept-alive connections, and when each went idle.
        self._idle: list[tuple[trio.SocketStream, h11.Connection, float]] = []

    async def aclose(self) -> None:
        for stream, _, _ in self._idle:
            await stream.aclose()

    async def _connection(self) -> tuple[trio.SocketStream, h11.Connection]:
        """A kept-alive connection that the balancer has not closed for idleness, else a new one."""
        while self._idle:
            stream, connection, idle_since = self._idle.pop()
            if trio.current_time() - idle_since < KEEP_ALIVE_REUSE_LIMIT:
                return stream, connection
            await stream.aclose()
        return await trio.open_tcp_stream("127.0.0.1", self._port), h11.Connection(h11.CLIENT)

    async def generate(self, prompt: str, max_tokens: int, timing: RequestTiming) -> None:
        stream, connection = await self._connection()
        body = json.dumps({"raw_prompt": prompt, "max_tokens": max_tokens}).encode()
        headers = [("Host", f"127.0.0.1:{self._port}"), ("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        request = h11.Request(method="POST", target="/api/v1/continue_from_raw_prompt", headers=headers)
        await stream.send_all(connection.send(request) + connection.send(h11.Data(data=body)) + connection.send(h11.EndOfMessage()))
        ended = False
        status = 0
        pending = b""
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                pending += event.data
                if status != 200:
                    continue
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip() and _observe(json.loads(line), timing):
                        ended = True
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise RuntimeError(f"unexpected HTTP event from the balancer: {event!r}")
        if status != 200:
            raise RuntimeError(f"the balancer answered {status}: {pending[:300]!r}")
        if not ended:
            raise RuntimeError("the NDJSON stream ended without Done")
        if connection.our_state is h11.MUST_CLOSE:  # e.g. Hypercorn's keep-alive request limit
            await stream.aclose()
            return
        connection.start_next_cycle()
        self._idle.append((stream, connection, trio.current_time()))


class HttpxNdjsonSide:
    """The NDJSON route read line by line with httpx: what a typical Python client adds on top."""

    name = "ndjson-httpx"

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def generate(self, prompt: str, max_tokens: int, timing: RequestTiming) -> None:
        body = {"raw_prompt": prompt, "max_tokens": max_tokens}
        async with self._client.stream("POST", "/api/v1/continue_from_raw_prompt", json=body) as response:
            if response.status_code != 200:
                raise RuntimeError(f"the balancer answered {response.status_code}: {(await response.aread())[:300]!r}")
            async for line in response.aiter_lines():
                if line.strip() and _observe(json.loads(line), timing):
                    return
        raise RuntimeError("the NDJSON stream ended without Done")


class WebSocketSide:
    """Requests multiplexed over one connection to /api/v1/inference_socket (trio-websocket)."""

    name = "websocket"

    def __init__(self, socket: trio_websocket.WebSocketConnection) -> None:
        self._socket = socket
        self._routes: dict[str, trio.MemorySendChannel[dict[str, Any]]] = {}
        self._next_id = 0

    async def read(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            message = json.loads(await self._socket.get_message())
            envelope = message.get("Response") or message.get("Error")
            if envelope is None:
                continue  # a notification
            route = self._routes.get(envelope["request_id"])
            if route is not None:
                route.send_nowait(message)

    async def generate(self, prompt: str, max_tokens: int, timing: RequestTiming) -> None:
        self._next_id += 1
        request_id = f"bench-{self._next_id}"
        send, receive = trio.open_memory_channel[dict[str, Any]](math.inf)
        self._routes[request_id] = send
        try:
            request = {"ContinueFromRawPrompt": {"raw_prompt": prompt, "max_tokens": max_tokens}}
            await self._socket.send_message(json.dumps({"Request": {"id": request_id, "request": request}}))
            async for message in receive:
                if _observe(message, timing):
                    return
        finally:
            del self._routes[request_id]


async def run_requests(side: Side, run_tag: str, requests: int, in_flight: int, max_tokens: int) -> list[RequestTiming]:
    """`requests` requests, `in_flight` at a time; a request's clock starts when it is sent."""
    gate = trio.Semaphore(in_flight)
    timings: list[RequestTiming] = []

    async def one(index: int) -> None:
        async with gate:
            timing = RequestTiming(issued=time.perf_counter())
            timings.append(timing)
            await side.generate(prompt_for(run_tag, index), max_tokens, timing)
            timing.finished = time.perf_counter()

    async with trio.open_nursery() as nursery:
        for index in range(requests):
            nursery.start_soon(one, index)
    return timings


def run_figures(timings: Sequence[RequestTiming]) -> dict[str, Any]:
    wall = max(t.finished for t in timings) - min(t.issued for t in timings)
    generated = sum(t.generated_tokens for t in timings)
    ttfts = [(t.first_token - t.issued) * 1000 for t in timings if t.first_token is not None]
    return {
        "requests": len(timings),
        "generated_tokens": generated,
        "wall_s": round(wall, 3),
        "tokens_per_second": round(generated / wall, 2),
        "ttft_p50_ms": round(percentile(ttfts, 0.5), 2),
        "ttft_p99_ms": round(percentile(ttfts, 0.99), 2),
        "ttfts_ms": [round(value, 2) for value in ttfts],
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def side_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    pooled = [value for run in runs for value in run["ttfts_ms"]]
    return {
        "tokens_per_second": median_or_none([run["tokens_per_second"] for run in runs]),
        "ttft_p50_ms": median_or_none([run["ttft_p50_ms"] for run in runs]),
        "ttft_p99_ms": median_or_none([run["ttft_p99_ms"] for run in runs]),
        "pooled_ttft_p50_ms": round(percentile(pooled, 0.5), 2),
        "pooled_ttft_p99_ms": round(percentile(pooled, 0.99), 2),
        "python_cpu_percent_of_a_core": {
            name: median_or_none([run["python_cpu_percent_of_a_core"][name] for run in runs])
            for name in runs[0]["python_cpu_percent_of_a_core"]
        },
        "runs": [{key: value for key, value in run.items() if key != "ttfts_ms"} for run in runs],
    }


def overhead_against_direct(direct: list[dict[str, Any]], through: list[dict[str, Any]]) -> dict[str, Any]:
    """Differences and ratios paired by repeat (both measured back to back), then medians."""
    pairs = list(zip(direct, through, strict=True))
    return {
        "added_ttft_p50_ms": median_or_none([t["ttft_p50_ms"] - d["ttft_p50_ms"] for d, t in pairs]),
        "added_ttft_p99_ms": median_or_none([t["ttft_p99_ms"] - d["ttft_p99_ms"] for d, t in pairs]),
        "tokens_per_second_ratio": median_or_none([t["tokens_per_second"] / d["tokens_per_second"] for d, t in pairs]),
    }


@attrs.frozen
class LatencyOptions:
    model: str
    model_path: Path
    slots: int
    threads: int
    max_tokens: int
    requests_per_run: int
    repeats: int
    transports: tuple[str, ...]
    probe_requests: int


@contextlib.asynccontextmanager
async def open_cluster(options: LatencyOptions, parameters: dict[str, Any]) -> AsyncIterator[Cluster]:
    """A real balancer and one agent with the model loaded (subprocesses, logs in a temporary folder)."""
    directory = Path(tempfile.mkdtemp(prefix="balancer_overhead-"))
    progress(f"  balancer and agent logs in {directory}")
    cluster = Cluster(directory)
    try:
        await trio.to_thread.run_sync(cluster.start_balancer)
        cluster.start_agent(AGENT_NAME, slots=options.slots, threads=options.threads, flags=("--cache-ram-mib", "0"))
        await trio.to_thread.run_sync(lambda: cluster.put_desired_state(options.model_path, **parameters))
        await trio.to_thread.run_sync(lambda: cluster.wait_for_ready_agents([AGENT_NAME], timeout=180))
        yield cluster
    finally:
        await trio.to_thread.run_sync(cluster.shutdown)


async def measure_latency(options: LatencyOptions) -> dict[str, Any]:
    parameters = {**DETERMINISTIC_PARAMETERS, "context_size": CONTEXT_SIZE}
    engine_settings = EngineSettings(
        model_path=str(options.model_path),
        slots=options.slots,
        inference_parameters=structure(parameters, InferenceParameters),
        n_threads=options.threads,
    )
    progress(f"latency, {options.threads} thread(s): starting the balancer and agent, loading the direct engine")
    async with contextlib.AsyncExitStack() as stack:
        cluster = await stack.enter_async_context(open_cluster(options, parameters))
        engine = await stack.enter_async_context(Engine.open(engine_settings))
        sides: list[Side] = [DirectSide(engine), *await balancer_sides(stack, cluster.inference_port, options.transports)]
        for side in sides:
            progress(f"  warming up {side.name}")
            await run_requests(side, f"warm-{side.name}", options.slots, options.slots, 8)
        progress(f"  isolated TTFT: {options.probe_requests} requests one at a time, each side paired with direct")
        probe = await probe_ttft(sides, options.probe_requests)
        runs: dict[str, list[dict[str, Any]]] = {side.name: [] for side in sides}
        for repeat in range(options.repeats):
            shift = repeat % len(sides)
            for position, side in [*enumerate(sides)][shift:] + [*enumerate(sides)][:shift]:
                cpu_before = python_cpu_seconds(cluster)
                timings = await run_requests(
                    side, f"{position}-{repeat}", options.requests_per_run, options.slots, options.max_tokens
                )
                figures = run_figures(timings)
                figures["python_cpu_percent_of_a_core"] = {
                    name: round(100 * (seconds - cpu_before[name]) / figures["wall_s"], 2)
                    for name, seconds in python_cpu_seconds(cluster).items()
                }
                runs[side.name].append({"repeat": repeat + 1, **figures})
                cpu = ", ".join(f"{name} {share} %" for name, share in figures["python_cpu_percent_of_a_core"].items())
                progress(
                    f"  repeat {repeat + 1}/{options.repeats} {side.name:<9} {figures['tokens_per_second']:>7} tok/s, "
                    f"TTFT p50 {figures['ttft_p50_ms']} ms p99 {figures['ttft_p99_ms']} ms "
                    f"(load {figures['load_average_1m']}; CPU of a core: {cpu})"
                )
    result: dict[str, Any] = {"threads": options.threads, "isolated_ttft": probe, "concurrent": {}}
    for name, side_runs in runs.items():
        result["concurrent"][name] = side_summary(side_runs)
        if name != "direct":
            result["concurrent"][name].update(overhead_against_direct(runs["direct"], side_runs))
    return result


def python_cpu_seconds(cluster: Cluster) -> dict[str, float]:
    """CPU time so far of what runs beside llama.cpp's threads: the balancer, the agent's Python
    (its main thread) and this process's (the clients, and the direct engine's scheduler).
    On a machine whose cores all run llama.cpp, each of them costs the engine throughput."""
    assert cluster.balancer is not None
    return {
        "balancer": process_cpu_seconds(cluster.balancer.process.pid),
        "agent_python": main_thread_cpu_seconds(cluster.agents[AGENT_NAME].process.pid),
        "benchmark_python": main_thread_cpu_seconds(os.getpid()),
    }


async def probe_ttft(sides: list[Side], requests: int) -> dict[str, Any]:
    """TTFT with nothing else running, each balancer side paired with the direct engine in turn:
    the same prompt (but for its first digit) on the direct engine and on that side, alternating
    which goes first, `requests` times; the differences paired by prompt isolate what the
    balancer and agent add.

    Pairs, not one rotation over every side: in a rotation the agent serves every balancer side
    and so gets two or three times the direct engine's requests, and measured this way its
    prefill steps took 7-10 % more CPU time than the direct engine's (one llama.cpp thread,
    nothing else running), against 1-2 % when the two engines get the same requests."""
    direct, *through_sides = sides
    result: dict[str, Any] = {"requests": requests}
    direct_ttfts: list[float] = []
    for position, side in enumerate(through_sides, start=1):
        pair: dict[str, list[float]] = {direct.name: [], side.name: []}
        for index in range(requests):
            order = [(0, direct), (position, side)] if index % 2 == 0 else [(position, side), (0, direct)]
            for digit, probed in order:
                timing = RequestTiming(issued=time.perf_counter())
                # Same length everywhere, a different first digit for each side (digits are single
                # tokens in both bundled vocabularies): no prompt cache helps, and no side has more to prefill.
                prompt = f"{digit}{index:03d} {PROMPTS[index % len(PROMPTS)]}"
                await probed.generate(prompt, PROBE_MAX_TOKENS, timing)
                assert timing.first_token is not None
                pair[probed.name].append((timing.first_token - timing.issued) * 1000)
        direct_ttfts += pair[direct.name]
        added = [through - alone for through, alone in zip(pair[side.name], pair[direct.name], strict=True)]
        result[side.name] = {
            "ttft_p50_ms": round(percentile(pair[side.name], 0.5), 2),
            "ttft_p99_ms": round(percentile(pair[side.name], 0.99), 2),
            "direct_ttft_p50_ms": round(percentile(pair[direct.name], 0.5), 2),
            "added_ttft_p50_ms": round(percentile(added, 0.5), 2),
            "added_ttft_p99_ms": round(percentile(added, 0.99), 2),
        }
        progress(
            f"    {side.name:<12} TTFT p50 {result[side.name]['ttft_p50_ms']} ms against direct "
            f"{result[side.name]['direct_ttft_p50_ms']} ms: added p50 {result[side.name]['added_ttft_p50_ms']} ms, "
            f"p99 {result[side.name]['added_ttft_p99_ms']} ms"
        )
    result[direct.name] = {
        "ttft_p50_ms": round(percentile(direct_ttfts, 0.5), 2),
        "ttft_p99_ms": round(percentile(direct_ttfts, 0.99), 2),
    }
    return result


# --- part b: relay cost per engine step ---------------------------------------------------


@attrs.frozen
class PacedOptions:
    slots: int
    tokens: int
    step_interval: float
    requests_per_run: int
    repeats: int
    transports: tuple[str, ...]


def measure_paced(options: PacedOptions) -> dict[str, Any]:
    """The balancer's CPU per engine step at an engine's pace, with nothing else running: a
    scripted fast agent sends one frame of `slots` tokens every `step_interval` to the lean
    clients of the latency part. Steady and quiet, unlike the latency part's ratio: this is
    the figure to compare relay changes by (wake-ups, task switches and writes per step)."""
    with tempfile.TemporaryDirectory(prefix="balancer_overhead-paced-") as temporary, contextlib.ExitStack() as stack:
        directory = Path(temporary)
        cluster = Cluster(directory)
        stack.callback(cluster.shutdown)
        balancer = cluster.start_balancer()
        stack.enter_context(
            scripted_fast_agent(
                cluster, directory, "paced", slots=options.slots, tokens=options.tokens, step_interval=options.step_interval
            )
        )
        runs = trio.run(paced_runs, cluster.inference_port, balancer.process.pid, options)
    result: dict[str, Any] = {
        "slots": options.slots,
        "tokens_per_request": options.tokens,
        "step_interval_ms": options.step_interval * 1000,
        "requests_per_run": options.requests_per_run,
    }
    for transport, transport_runs in runs.items():
        result[transport] = {
            "balancer_cpu_ms_per_step": median_or_none([run["balancer_cpu_ms_per_step"] for run in transport_runs]),
            "balancer_cpu_us_per_token": median_or_none([run["balancer_cpu_us_per_token"] for run in transport_runs]),
            **{
                figure: median_or_none([run[figure] for run in transport_runs])
                for figure in ("balancer_wakeups_per_step", "client_cpu_ms_per_step", "client_wakeups_per_step")
            },
            "runs": transport_runs,
        }
    return result


async def paced_runs(inference_port: int, balancer_pid: int, options: PacedOptions) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {}
    async with contextlib.AsyncExitStack() as stack:
        sides = await balancer_sides(stack, inference_port, options.transports)
        for side in sides:
            await run_requests(side, f"warm-{side.name}", options.slots, options.slots, 4)
        for repeat in range(options.repeats):
            for side in sides:
                before = _paced_counters(balancer_pid)
                timings = await run_requests(
                    side, f"paced-{repeat}", options.requests_per_run, options.slots, options.tokens
                )
                after = _paced_counters(balancer_pid)
                cpu = after["balancer_cpu"] - before["balancer_cpu"]
                # Each wave of `slots` requests takes a step per token and one for Done.
                steps = math.ceil(options.requests_per_run / options.slots) * (options.tokens + 1)
                tokens = sum(timing.generated_tokens for timing in timings)
                run = {
                    "repeat": repeat + 1,
                    "steps": steps,
                    "tokens": tokens,
                    "wall_s": round(max(t.finished for t in timings) - min(t.issued for t in timings), 3),
                    "balancer_cpu_ms_per_step": round(1000 * cpu / steps, 3),
                    "balancer_cpu_us_per_token": round(1e6 * cpu / tokens, 1),
                    "client_cpu_ms_per_step": round(1000 * (after["client_cpu"] - before["client_cpu"]) / steps, 3),
                    "balancer_wakeups_per_step": round((after["balancer_wakeups"] - before["balancer_wakeups"]) / steps, 2),
                    "client_wakeups_per_step": round((after["client_wakeups"] - before["client_wakeups"]) / steps, 2),
                }
                runs.setdefault(side.name, []).append(run)
                progress(
                    f"paced {side.name:<9} repeat {repeat + 1}/{options.repeats}: balancer "
                    f"{run['balancer_cpu_ms_per_step']} ms of CPU per step ({run['balancer_cpu_us_per_token']} us per token), "
                    f"{run['balancer_wakeups_per_step']} wake-ups; clients {run['client_cpu_ms_per_step']} ms, "
                    f"{run['client_wakeups_per_step']} wake-ups"
                )
    return runs


def _paced_counters(balancer_pid: int) -> dict[str, float]:
    return {
        "balancer_cpu": process_cpu_seconds(balancer_pid),
        "balancer_wakeups": process_wakeups(balancer_pid),
        "client_cpu": main_thread_cpu_seconds(os.getpid()),
        "client_wakeups": process_wakeups(os.getpid()),
    }


# --- part c: forwarding ceiling ----------------------------------------------------------


@attrs.frozen
class CeilingOptions:
    slots: int
    tokens: int
    clients: int
    requests_per_client: int
    repeats: int
    transports: tuple[str, ...]
    round_trips: int
    agent_frames: tuple[str, ...]


@contextlib.contextmanager
def scripted_fast_agent(
    cluster: Cluster,
    directory: Path,
    name: str,
    *,
    slots: int,
    tokens: int,
    batching: bool = True,
    step_interval: float = 0.0,
) -> Iterator[None]:
    """A scripted fast agent process, registered with the balancer while the block runs."""
    with (directory / f"{name}.log").open("wb") as log:
        agent = subprocess.Popen(
            [
                sys.executable, "-m", "tests.proxy.scripted_fast_agent",
                "--management-addr", cluster.management_addr,
                "--slots", str(slots),
                "--tokens", str(tokens),
                "--name", name,
                "--batching" if batching else "--no-batching",
                "--step-interval", str(step_interval),
            ],
            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_until(lambda: any(a["name"] == name for a in cluster.agents_snapshot()), 30, f"agent {name} to register")
        yield
    finally:
        agent.terminate()
        agent.wait(10)


def measure_ceiling(options: CeilingOptions) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="balancer_overhead-ceiling-") as temporary, contextlib.ExitStack() as stack:
        directory = Path(temporary)
        cluster = Cluster(directory)
        stack.callback(cluster.shutdown)
        balancer = cluster.start_balancer()
        progress(f"relay round trip: {options.round_trips} one-token requests one at a time on each transport")
        with scripted_fast_agent(cluster, directory, "round-trip", slots=1, tokens=1):
            round_trip = trio.run(relay_round_trip, cluster.inference_port, options.transports, options.round_trips)
        wait_until(lambda: not cluster.agents_snapshot(), 30, "the round-trip agent to leave")
        pid = balancer.process.pid
        result: dict[str, Any] = {
            "relay_round_trip": round_trip,
            "agent_slots": options.slots,
            "tokens_per_request": options.tokens,
            "clients": options.clients,
            "requests_per_client": options.requests_per_client,
            "balancer_rss_idle_mib": process_memory_mib(pid)["rss_mib"],
        }
        for frames in options.agent_frames:
            name = f"ceiling-{frames}"
            with scripted_fast_agent(
                cluster, directory, name, slots=options.slots, tokens=options.tokens, batching=frames == "batched"
            ):
                result[frames] = {
                    transport: ceiling_figures(cluster, pid, transport, frames, options)
                    for transport in options.transports
                    if transport in CEILING_TRANSPORTS
                }
            wait_until(lambda: not cluster.agents_snapshot(), 30, f"agent {name} to leave")
        return result


def ceiling_figures(cluster: Cluster, pid: int, transport: str, frames: str, options: CeilingOptions) -> dict[str, Any]:
    runs = []
    for repeat in range(options.repeats):
        run = ceiling_run(cluster, pid, transport, options)
        runs.append(run)
        progress(
            f"ceiling {frames:<8} {transport:<9} repeat {repeat + 1}/{options.repeats}: "
            f"{run['messages_per_second']:>8} messages/s, balancer CPU {run['balancer_cpu_percent']} % "
            f"({run['balancer_cpu_us_per_message']} us/message), "
            f"RSS {run['rss_mib']} MiB (load {run['load_average_1m']})"
        )
    return {
        "messages_per_second": median_or_none([run["messages_per_second"] for run in runs]),
        "balancer_cpu_percent": median_or_none([run["balancer_cpu_percent"] for run in runs]),
        "balancer_cpu_us_per_message": median_or_none([run["balancer_cpu_us_per_message"] for run in runs]),
        "balancer_peak_rss_mib": max(run["peak_rss_mib"] for run in runs),
        "runs": runs,
    }


async def balancer_sides(stack: contextlib.AsyncExitStack, inference_port: int, transports: Sequence[str]) -> list[Side]:
    """A client side per transport on the balancer's inference port, closed with `stack`."""
    sides: list[Side] = []
    if "ndjson" in transports:
        ndjson_side = NdjsonSide(inference_port)
        stack.push_async_callback(ndjson_side.aclose)
        sides.append(ndjson_side)
    if "ndjson-httpx" in transports:
        client = await stack.enter_async_context(
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{inference_port}", timeout=CLIENT_TIMEOUT_S)
        )
        sides.append(HttpxNdjsonSide(client))
    if "websocket" in transports:
        socket = await stack.enter_async_context(
            trio_websocket.open_websocket_url(f"ws://127.0.0.1:{inference_port}/api/v1/inference_socket")
        )
        websocket_side = WebSocketSide(socket)
        nursery = await stack.enter_async_context(trio.open_nursery())
        await nursery.start(websocket_side.read)
        stack.callback(nursery.cancel_scope.cancel)
        sides.append(websocket_side)
    return sides


async def relay_round_trip(inference_port: int, transports: tuple[str, ...], requests: int) -> dict[str, Any]:
    """TTFT through the balancer to the scripted fast agent, whose own work is negligible: what the
    balancer's relay and the agent socket add to a request, with no engine time to hide it."""
    result: dict[str, Any] = {"requests": requests}
    async with contextlib.AsyncExitStack() as stack:
        sides = await balancer_sides(stack, inference_port, transports)
        for side in sides:
            ttfts = []
            for index in range(requests):
                timing = RequestTiming(issued=time.perf_counter())
                await side.generate(f"round trip {index}", 1, timing)
                assert timing.first_token is not None
                ttfts.append((timing.first_token - timing.issued) * 1000)
            result[side.name] = {
                "ttft_p50_ms": round(percentile(ttfts, 0.5), 3),
                "ttft_p99_ms": round(percentile(ttfts, 0.99), 3),
            }
            progress(f"  {side.name:<9} TTFT p50 {result[side.name]['ttft_p50_ms']} ms, p99 {result[side.name]['ttft_p99_ms']} ms")
    return result


def ceiling_run(cluster: Cluster, balancer_pid: int, transport: str, options: CeilingOptions) -> dict[str, Any]:
    """One client process; the balancer's CPU time is read when the clients start and when they end."""
    command = [
        sys.executable, str(Path(__file__).resolve()), "ceiling-clients",
        "--inference-addr", f"127.0.0.1:{cluster.inference_port}",
        "--transport", transport,
        "--clients", str(options.clients),
        "--requests-per-client", str(options.requests_per_client),
    ]  # fmt: skip
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as clients:
        assert clients.stdout is not None
        if clients.stdout.readline().strip() != "start":
            raise RuntimeError("the client process did not start")
        cpu_before = process_cpu_seconds(balancer_pid)
        outcome = json.loads(clients.stdout.readline())
        cpu_after = process_cpu_seconds(balancer_pid)
    if outcome["errors"]:
        raise RuntimeError(f"clients saw errors: {outcome['errors'][:5]}")
    cluster.wait_idle()
    return {
        "messages": outcome["messages"],
        "wall_s": outcome["wall_s"],
        "messages_per_second": round(outcome["messages"] / outcome["wall_s"]),
        "balancer_cpu_percent": round(100 * (cpu_after - cpu_before) / outcome["wall_s"], 1),
        "balancer_cpu_us_per_message": round(1e6 * (cpu_after - cpu_before) / outcome["messages"], 1),
        **process_memory_mib(balancer_pid),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


async def ceiling_clients(inference_addr: str, transport: str, clients: int, requests_per_client: int) -> None:
    """The client side of one ceiling run (its own process): print "start", then one JSON line.

    Clients count messages without decoding them: a newline per NDJSON message, a frame per
    WebSocket message, so that the client process stays light.
    """
    messages = 0
    errors: list[str] = []

    async def ndjson_client(client: httpx.AsyncClient, index: int) -> None:
        nonlocal messages
        for number in range(requests_per_client):
            body = {"raw_prompt": f"client {index} request {number}", "max_tokens": 4096}
            async with client.stream("POST", "/api/v1/continue_from_raw_prompt", json=body) as response:
                tail = b""
                async for chunk in response.aiter_raw():
                    messages += chunk.count(b"\n")
                    tail = (tail + chunk)[-1000:]
                if b'"Done"' not in tail:
                    errors.append(tail.decode(errors="replace"))

    async def websocket_client(index: int) -> None:
        nonlocal messages
        url = f"ws://{inference_addr}/api/v1/inference_socket"
        async with trio_websocket.open_websocket_url(url) as socket:
            for number in range(requests_per_client):
                request = {"ContinueFromRawPrompt": {"raw_prompt": f"client {index}", "max_tokens": 4096}}
                await socket.send_message(json.dumps({"Request": {"id": f"c{index}-{number}", "request": request}}))
                while True:
                    message = await socket.get_message()
                    messages += 1
                    if '"Done"' in message or '"Error"' in message:
                        if '"Error"' in message:
                            errors.append(message)
                        break

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=f"http://{inference_addr}", timeout=CLIENT_TIMEOUT_S, limits=limits) as client:
        print("start", flush=True)
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for index in range(clients):
                if transport == "ndjson":
                    nursery.start_soon(ndjson_client, client, index)
                else:
                    nursery.start_soon(websocket_client, index)
        wall = time.perf_counter() - started
    print(json.dumps({"messages": messages, "wall_s": round(wall, 4), "errors": errors}), flush=True)


# --- command line ------------------------------------------------------------------------


def comma_list(choices: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(item.strip() for item in text.split(",") if item.strip())
        unknown = [item for item in items if item not in choices]
        if not items or unknown:
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {', '.join(choices)} (got {text!r})")
        return items

    return parse


def thread_counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 2,1 (got {text!r})") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"thread counts must be 1 or more (got {text!r})")
    return counts


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="balancer_overhead.py",
        description="Added latency and throughput of the balancer against a direct engine, and the forwarding "
        "ceiling of one balancer process; prints one JSON object (progress on stderr).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--parts", type=comma_list(("latency", "paced", "ceiling")), default=("latency", "paced", "ceiling")
    )
    parser.add_argument("--model", default="gemma", choices=sorted(MODEL_ALIASES), help="bundled model for latency")
    parser.add_argument("--slots", type=int, default=4, help="slots of the engine and agent; also requests in flight")
    parser.add_argument("--threads", type=thread_counts, default=(2,), help="llama.cpp threads, comma-separated")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--requests-per-run", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="runs of each side (latency)")
    parser.add_argument("--probe-requests", type=int, default=40, help="isolated TTFT requests per side")
    parser.add_argument(
        "--transports", type=comma_list(("ndjson", "ndjson-httpx", "websocket")), default=("ndjson", "websocket"),
        help="client sides: ndjson (a lean h11 client), ndjson-httpx (the same route through httpx), websocket; "
        "the ceiling's clients use httpx for ndjson and skip ndjson-httpx",
    )
    parser.add_argument("--paced-step-ms", type=float, default=40.0, help="paced part: scripted engine step interval")
    parser.add_argument("--paced-requests", type=int, default=32, help="paced part: requests per run")
    parser.add_argument("--paced-repeats", type=int, default=3)
    parser.add_argument("--ceiling-slots", type=int, default=64)
    parser.add_argument("--ceiling-tokens", type=int, default=2000)
    parser.add_argument("--ceiling-clients", type=int, default=64)
    parser.add_argument("--ceiling-requests-per-client", type=int, default=1)
    parser.add_argument("--ceiling-repeats", type=int, default=3)
    parser.add_argument("--round-trips", type=int, default=200, help="one-token requests through the relay")
    parser.add_argument(
        "--agent-frames", type=comma_list(("batched", "single")), default=("batched", "single"),
        help="ceiling agent's frames: batched (one per step, our agents) and/or single (one message each, Paddler's)",
    )
    parser.add_argument("--label", default=None, help="a word for what is measured (e.g. before), kept in the JSON")
    parser.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/…json")
    return parser.parse_args(argv)


def parse_client_arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="balancer_overhead.py ceiling-clients")
    parser.add_argument("--inference-addr", required=True)
    parser.add_argument("--transport", choices=("ndjson", "websocket"), required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--requests-per-client", type=int, required=True)
    return parser.parse_args(argv)


async def run_latency(args: argparse.Namespace, model_path: Path) -> list[dict[str, Any]]:
    results = []
    for threads in args.threads:
        options = LatencyOptions(
            model=args.model,
            model_path=model_path,
            slots=args.slots,
            threads=threads,
            max_tokens=args.max_tokens,
            requests_per_run=args.requests_per_run,
            repeats=args.repeats,
            transports=args.transports,
            probe_requests=args.probe_requests,
        )
        results.append(await measure_latency(options))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["ceiling-clients"]:
        client_args = parse_client_arguments(argv[1:])
        trio.run(
            ceiling_clients,
            client_args.inference_addr,
            client_args.transport,
            client_args.clients,
            client_args.requests_per_client,
        )
        return 0
    args = parse_arguments(argv)
    report = report_header("balancer_overhead", args.label)
    if "latency" in args.parts:
        model_path = ensure_model(MODEL_ALIASES[args.model])
        report["latency"] = {
            "model": args.model,
            "model_file": model_path.name,
            "slots": args.slots,
            "max_tokens": args.max_tokens,
            "requests_per_run": args.requests_per_run,
            "repeats": args.repeats,
            "sampling": "greedy (temperature 0, top_k 1)",
            "results": trio.run(run_latency, args, model_path),
        }
    if "paced" in args.parts:
        report["paced"] = measure_paced(
            PacedOptions(
                slots=args.slots,
                tokens=args.max_tokens,
                step_interval=args.paced_step_ms / 1000,
                requests_per_run=args.paced_requests,
                repeats=args.paced_repeats,
                transports=tuple(transport for transport in args.transports if transport in CEILING_TRANSPORTS),
            )
        )
    if "ceiling" in args.parts:
        report["ceiling"] = measure_ceiling(
            CeilingOptions(
                slots=args.ceiling_slots,
                tokens=args.ceiling_tokens,
                clients=args.ceiling_clients,
                requests_per_client=args.ceiling_requests_per_client,
                repeats=args.ceiling_repeats,
                transports=args.transports,
                round_trips=args.round_trips,
                agent_frames=args.agent_frames,
            )
        )
    report["machine"]["load_average_at_end"] = [round(value, 2) for value in os.getloadavg()]
    text = json.dumps(report)
    print(text, flush=True)
    if not args.no_save:
        path = save_result(report, "balancer_overhead", args.label)
        progress(f"saved {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
