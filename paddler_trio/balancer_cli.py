"""`paddler balancer`: the inference and management services in front of the agents (spec 1.2)."""

from __future__ import annotations

import argparse
import functools
import sys

import trio

from paddler_trio.balancer_config import BalancerConfig
from paddler_trio.cli_values import milliseconds, socket_address


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


def add_parser(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "balancer",
        help="run the load balancer (inference and management services)",
        description=(
            "Run the balancer: the inference service (NDJSON and WebSocket) dispatches requests to the "
            "least busy agent, buffering them while no slot is free; the management service is where agents "
            "connect and where the cluster's desired state, agents and metrics are managed. "
            "Durations are integer milliseconds. SIGINT/SIGTERM shut it down gracefully."
        ),
    )
    parser.add_argument(
        "--buffered-request-timeout",
        type=milliseconds,
        default=milliseconds("10000"),
        metavar="MS",
        help="longest time a request may wait for a free slot before the 504 error (default: 10000)",
    )
    parser.add_argument(
        "--compat-openai-addr",
        type=socket_address,
        default=None,
        metavar="HOST:PORT",
        help="serve the OpenAI-compatible API (/v1/chat/completions, /v1/responses, /v1/completions, "
        "/v1/embeddings, /v1/models) on this address",
    )
    parser.add_argument(
        "--inference-addr",
        type=socket_address,
        default="127.0.0.1:8061",
        metavar="HOST:PORT",
        help="inference service address (default: 127.0.0.1:8061)",
    )
    parser.add_argument(
        "--inference-item-timeout",
        type=milliseconds,
        default=milliseconds("30000"),
        metavar="MS",
        help="longest silence allowed between two messages of the agent for one request, "
        "time to first token included, before the 504 error (default: 30000)",
    )
    parser.add_argument(
        "--inference-cors-allowed-host",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="origin allowed by CORS on the inference service (e.g. http://localhost:3000); repeatable",
    )
    parser.add_argument(
        "--management-addr",
        type=socket_address,
        default="127.0.0.1:8060",
        metavar="HOST:PORT",
        help="management service address, where agents connect (default: 127.0.0.1:8060)",
    )
    parser.add_argument(
        "--management-cors-allowed-host",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="origin allowed by CORS on the management service; repeatable",
    )
    parser.add_argument(
        "--max-buffered-requests",
        type=_non_negative_int,
        default=30,
        metavar="N",
        help="most requests waiting for a free slot at once, beyond which the 503 error; "
        "0 disables buffering (default: 30)",
    )
    parser.add_argument(
        "--state-database",
        default="memory://",
        metavar="URL",
        help="where the desired state is kept: memory:// (default, lost on exit) or file:///absolute/path.json "
        "(kept across restarts; created with the default state when missing)",
    )
    parser.add_argument(
        "--statsd-addr",
        type=socket_address,
        default=None,
        metavar="HOST:PORT",
        help="send the metrics as StatsD gauges over UDP to this address",
    )
    parser.add_argument(
        "--statsd-prefix",
        default="paddler_",
        metavar="PREFIX",
        help="prefix of the StatsD and Prometheus metric names (default: paddler_)",
    )
    parser.add_argument(
        "--statsd-reporting-interval",
        type=milliseconds,
        default=milliseconds("10000"),
        metavar="MS",
        help="interval between two StatsD reports (default: 10000)",
    )
    parser.add_argument(
        "--web-admin-panel-addr",
        type=socket_address,
        default=None,
        metavar="HOST:PORT",
        help="address of the web admin panel; for now it only adds http://HOST:PORT to the CORS origins of "
        "both services (the panel itself is not served by this version yet)",
    )
    parser.set_defaults(handler=functools.partial(_run, parser))


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from paddler_trio.management.state_database import StateDatabaseError
    from paddler_trio.nursery.balancer import run_balancer

    if args.statsd_reporting_interval <= 0:
        parser.error("--statsd-reporting-interval must be at least 1 ms")
    config = BalancerConfig(
        inference_addr=args.inference_addr,
        management_addr=args.management_addr,
        compat_openai_addr=args.compat_openai_addr,
        web_admin_panel_addr=args.web_admin_panel_addr,
        buffered_request_timeout=args.buffered_request_timeout,
        inference_item_timeout=args.inference_item_timeout,
        max_buffered_requests=args.max_buffered_requests,
        inference_cors_allowed_hosts=tuple(args.inference_cors_allowed_host),
        management_cors_allowed_hosts=tuple(args.management_cors_allowed_host),
        state_database=args.state_database,
        statsd_addr=args.statsd_addr,
        statsd_prefix=args.statsd_prefix,
        statsd_reporting_interval=args.statsd_reporting_interval,
    )
    try:
        trio.run(functools.partial(run_balancer, config))
    except StateDatabaseError as error:
        print(f"paddler balancer: error: {error}", file=sys.stderr)
        return 2
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if all(isinstance(leaf, SystemExit) for leaf in leaves):
            return 130  # a second signal while shutting down
        if all(isinstance(leaf, OSError) for leaf in leaves):
            print(f"paddler balancer: error: {leaves[0]}", file=sys.stderr)  # e.g. address already in use
            return 1
        raise
    return 0


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    return [
        leaf
        for error in group.exceptions
        for leaf in (_leaves(error) if isinstance(error, BaseExceptionGroup) else [error])
    ]
