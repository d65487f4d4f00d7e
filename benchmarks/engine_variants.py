#!/usr/bin/env python3
"""Our engine's decode tokens/s in two or more variants, side by side in one run.

A variant is a folder put first on PYTHONPATH: one that holds an installed `llama_cpp` package
(another llama-cpp-python build), e.g. made with

    CMAKE_ARGS="-DGGML_NATIVE=ON" pip wheel --no-deps --no-cache-dir llama-cpp-python==0.3.36 -w /tmp/native
    pip install --no-deps --target /tmp/builds/native /tmp/native/llama_cpp_python-*.whl

or a checkout that holds `paddler_trio` (another version of our code, e.g. `git worktree add
/tmp/before HEAD~1`), or `-` for what this Python imports as it is. Every round runs
`engine_throughput.py` (our engine only) once per variant, in a fresh process, alternating
which variant goes first; the medians over the rounds and each variant's ratio to the first
are reported. The JSON goes to stdout on one line and, unless `--no-save`, to
`benchmarks/results/engine_variants[-<label>]-<UTC timestamp>.json`. Progress goes to stderr.

Examples (the Makefile's builds; a change to the engine):

    benchmarks/engine_variants.py --variant portable=- --variant native=/tmp/builds/native --slots 1,4
    benchmarks/engine_variants.py --variant before=/tmp/before --variant after=- --model gemma --slots 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from result_files import report_header, save_result

BENCHMARKS = Path(__file__).resolve().parent
SYSTEM_INFO = "import llama_cpp; print(llama_cpp.llama_print_system_info().decode().strip())"


def variant(text: str) -> tuple[str, str]:
    name, separator, folder = text.partition("=")
    if not separator or not name or not folder:
        raise argparse.ArgumentTypeError(f"expected NAME=FOLDER or NAME=- (got {text!r})")
    if folder != "-" and not any((Path(folder) / package).is_dir() for package in ("llama_cpp", "paddler_trio")):
        raise argparse.ArgumentTypeError(f"{folder} holds neither a llama_cpp nor a paddler_trio package")
    return name, folder


def environment_for(folder: str) -> dict[str, str]:
    environment = dict(os.environ)
    if folder != "-":
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [folder, environment.get("PYTHONPATH")]))
    return environment


def system_info(folder: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", SYSTEM_INFO], env=environment_for(folder), capture_output=True, text=True, check=True
    ).stdout.strip()


def measure(folder: str, arguments: argparse.Namespace) -> dict[int, float]:
    """One engine_throughput run on this variant: tokens/s per slot count."""
    completed = subprocess.run(
        [
            sys.executable, str(BENCHMARKS / "engine_throughput.py"), "--skip-llama-server", "--no-save",
            "--model", arguments.model, "--slots", arguments.slots, "--repeats", "1",
            "--max-tokens", str(arguments.max_tokens), "--threads", str(arguments.threads),
        ],
        env=environment_for(folder),
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    return {result["slots"]: result["ours"]["tokens_per_second"] for result in report["results"]}


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="engine_variants.py",
        description="Compare our engine's tokens/s in several variants (llama-cpp-python builds, versions of "
        "our code), interleaved in one run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--variant", dest="variants", type=variant, action="append", required=True,
                        metavar="NAME=FOLDER",
                        help="a variant to measure (FOLDER holds llama_cpp or paddler_trio; '-': as installed)")
    parser.add_argument("--model", default="qwen", help="bundled model alias or GGUF path")
    parser.add_argument("--slots", default="1,4", help="slot counts, comma-separated")
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens generated per request")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="llama.cpp threads")
    parser.add_argument("--rounds", type=int, default=3, help="runs per variant; medians are reported")
    parser.add_argument("--label", default=None, help="added to the result file's name")
    parser.add_argument("--no-save", action="store_true", help="do not write the JSON under benchmarks/results/")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    variants: list[tuple[str, str]] = arguments.variants
    runs: dict[str, list[dict[int, float]]] = {name: [] for name, _ in variants}
    for round_number in range(arguments.rounds):
        order = variants if round_number % 2 == 0 else variants[::-1]
        for name, folder in order:
            figures = measure(folder, arguments)
            print(f"round {round_number + 1}: {name} {figures}", file=sys.stderr, flush=True)
            runs[name].append(figures)
    reference = variants[0][0]
    slot_counts = sorted(runs[reference][0])
    medians = {
        name: {slots: round(statistics.median(run[slots] for run in runs[name]), 2) for slots in slot_counts}
        for name in runs
    }
    report: dict[str, Any] = {
        **report_header("engine_variants", arguments.label),
        "model": arguments.model,
        "threads": arguments.threads,
        "max_tokens": arguments.max_tokens,
        "rounds": arguments.rounds,
        "variants": {
            name: {
                "folder": folder,
                "system_info": system_info(folder),
                "tokens_per_second_runs": {slots: [run[slots] for run in runs[name]] for slots in slot_counts},
                "tokens_per_second_median": medians[name],
                f"ratio_to_{reference}": {
                    slots: round(medians[name][slots] / medians[reference][slots], 3) for slots in slot_counts
                },
            }
            for name, folder in variants
        },
    }
    print(json.dumps(report), flush=True)
    if not arguments.no_save:
        print(f"saved {save_result(report, 'engine_variants', arguments.label)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
