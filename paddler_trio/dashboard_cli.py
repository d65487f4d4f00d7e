"""`paddler dashboard`: a live terminal view of a running balancer (Rich)."""

from __future__ import annotations

import argparse
import io
import logging
import sys

import trio

from paddler_trio.cli_values import positive_int, socket_address
from paddler_trio.environment_variables import MANAGEMENT_API_KEY


def add_parser(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "dashboard",
        help="live terminal view of a running balancer",
        description=(
            "Show a balancer's agents (model, slots busy/total, issues, last update), its buffered requests "
            "and the cluster's tokens/s, live from its management service. Up/Down select an agent to see its "
            "issues and model metadata; q or Esc quits. Reconnects when the balancer restarts."
        ),
    )
    parser.add_argument(
        "--management-addr", type=socket_address, default="127.0.0.1:8060", metavar="HOST:PORT",
        help="the balancer's management service (default: 127.0.0.1:8060)",
    )
    parser.add_argument(
        "--max-buffered-requests", type=positive_int, default=None, metavar="N",
        help="the balancer's --max-buffered-requests, shown beside the buffered count (the API does not expose it)",
    )
    parser.add_argument(
        "--management-api-key", default=None, metavar="KEY",
        help=f"Bearer key of the management service, when it has one (default: ${MANAGEMENT_API_KEY.name}; "
        "of several comma-separated keys, the first)",
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from paddler_trio.dashboard.dashboard import DashboardConfig, run_dashboard
    from paddler_trio.nursery.signals import run_until_stopped, stop_on_signals
    from paddler_trio.security.secret_sources import collect_keys

    # Read here, not as the flag's default, so that only this subcommand warns about an old name,
    # and before the log level goes up. The balancer's variable may hold several keys.
    environment_keys = collect_keys([], [], MANAGEMENT_API_KEY)
    api_key = args.management_api_key or (environment_keys[0] if environment_keys else None)

    # Log lines would tear the full-screen view.
    logging.getLogger().setLevel(logging.ERROR)
    # A terminal without UTF-8 (LANG=C) gets '?' for the status glyphs instead of a crash.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="replace")
    config = DashboardConfig(
        management_addr=args.management_addr.text,
        max_buffered_requests=args.max_buffered_requests,
        api_key=api_key,
    )

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(stop_on_signals, nursery.cancel_scope.cancel)
            await run_dashboard(config)
            nursery.cancel_scope.cancel()

    return run_until_stopped(main)
