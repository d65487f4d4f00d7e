#!/usr/bin/env python3
"""Engine interference: what a little CPU used by another process costs the engine when
llama.cpp's threads take every core (the balancer's and the agent's Python are such CPU).

The direct engine (in this process, as in `balancer_overhead.py`'s "direct" side: `--slots`
requests in flight, `--requests` of `--max-tokens` tokens, greedy sampling) runs alone and
beside an interferer: a separate process that wakes every PERIOD ms and keeps a core busy for
BUSY ms (`--interferers 10:0.3,40:1.2`), about what a process that relays a token per engine
step does. Runs alternate between alone and each interferer; each interferer's tok/s is
divided by the alone run just before it, and the medians over `--repeats` are reported with
the interferer's measured CPU (percent of one core).

One JSON object goes to stdout and, unless `--no-save`, to
`benchmarks/results/engine_interference[-<label>]-<UTC timestamp>.json`; progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import trio
from balancer_overhead import (
    CONTEXT_SIZE,
    DETERMINISTIC_PARAMETERS,
    DirectSide,
    median_or_none,
    progress,
    run_figures,
    run_requests,
)
from host_figures import process_cpu_seconds
from result_files import report_header, save_result

from paddler_trio.bundled_models import MODEL_ALIASES, ensure_model
from paddler_trio.engine.engine import Engine, EngineSettings
from paddler_trio.protocol import InferenceParameters, structure


def interferer(text: str) -> tuple[float, float]:
    period, _, busy = text.partition(":")
    try:
        pair = (float(period) / 1000, float(busy) / 1000)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected PERIOD_MS:BUSY_MS, got {text!r}") from None
    if pair[0] <= 0 or not 0 < pair[1] < pair[0]:
        raise argparse.ArgumentTypeError(f"need 0 < BUSY_MS < PERIOD_MS, got {text!r}")
    return pair


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="engine_interference.py",
        description="Direct engine tok/s alone and beside a process that wakes periodically and burns a little CPU.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", default="gemma", choices=sorted(MODEL_ALIASES))
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="llama.cpp threads")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--interferers",
        type=lambda text: tuple(interferer(part) for part in text.split(",")),
        default=(interferer("10:0.3"), interferer("40:1.2")),
        metavar="PERIOD_MS:BUSY_MS,...",
    )
    parser.add_argument("--label", default=None)
    parser.add_argument("--no-save", action="store_true")
    return parser.parse_args(argv)


# The interferer: a bare Python process (it starts in milliseconds) that runs until terminated.
BURNER = """
import sys, time
period, busy = float(sys.argv[1]), float(sys.argv[2])
while True:
    time.sleep(period)
    started = time.perf_counter()
    while time.perf_counter() - started < busy:
        pass
"""


async def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    parameters = {**DETERMINISTIC_PARAMETERS, "context_size": CONTEXT_SIZE}
    settings = EngineSettings(
        model_path=str(ensure_model(MODEL_ALIASES[args.model])),
        slots=args.slots,
        inference_parameters=structure(parameters, InferenceParameters),
        n_threads=args.threads,
    )
    results: list[dict[str, Any]] = [
        {"period_ms": period * 1000, "busy_ms": busy * 1000, "runs": []} for period, busy in args.interferers
    ]
    async with Engine.open(settings) as engine:
        side = DirectSide(engine)
        await run_requests(side, "warm", args.slots, args.slots, 8)
        for repeat in range(args.repeats):
            for index, (period, busy) in enumerate(args.interferers):
                alone = run_figures(await run_requests(side, f"a{repeat}-{index}", args.requests, args.slots, args.max_tokens))
                burner = await trio.lowlevel.open_process([sys.executable, "-c", BURNER, str(period), str(busy)])
                try:
                    await trio.sleep(0.2)
                    cpu_before = process_cpu_seconds(burner.pid)
                    beside = run_figures(
                        await run_requests(side, f"b{repeat}-{index}", args.requests, args.slots, args.max_tokens)
                    )
                    burner_cpu = process_cpu_seconds(burner.pid) - cpu_before
                finally:
                    burner.terminate()
                    await burner.wait()
                run = {
                    "repeat": repeat + 1,
                    "alone_tokens_per_second": alone["tokens_per_second"],
                    "beside_tokens_per_second": beside["tokens_per_second"],
                    "ratio": round(beside["tokens_per_second"] / alone["tokens_per_second"], 4),
                    "interferer_cpu_percent_of_a_core": round(100 * burner_cpu / beside["wall_s"], 2),
                }
                results[index]["runs"].append(run)
                progress(
                    f"repeat {repeat + 1}/{args.repeats} every {period * 1000:g} ms busy {busy * 1000:g} ms: "
                    f"{run['alone_tokens_per_second']} -> {run['beside_tokens_per_second']} tok/s "
                    f"(x{run['ratio']}; interferer {run['interferer_cpu_percent_of_a_core']} % of a core)"
                )
    for result in results:
        for key in ("ratio", "interferer_cpu_percent_of_a_core", "alone_tokens_per_second", "beside_tokens_per_second"):
            result[key] = median_or_none([run[key] for run in result["runs"]])
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(argv)
    report: dict[str, Any] = {
        **report_header("engine_interference", args.label),
        "model": args.model,
        "slots": args.slots,
        "threads": args.threads,
        "requests_per_run": args.requests,
        "max_tokens": args.max_tokens,
        "interferers": trio.run(measure, args),
    }
    text = json.dumps(report)
    print(text, flush=True)
    if not args.no_save:
        progress(f"saved {save_result(report, 'engine_interference', args.label)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
