"""`paddler agent`: join a balancer and serve its requests with llama.cpp."""

from __future__ import annotations

import argparse
import functools

import trio

from paddler_trio.agent.agent_config import AgentConfig
from paddler_trio.cli_values import positive_int, socket_address


def add_parser(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "agent",
        help="join a balancer and serve its requests with llama.cpp",
        description=(
            "Run an agent: it connects to the balancer's management service, receives the model and "
            "inference parameters from the balancer's desired state, and serves up to --slots requests at "
            "once with continuous batching. SIGINT/SIGTERM deregister it and stop it cleanly."
        ),
    )
    parser.add_argument(
        "--management-addr",
        required=True,
        type=socket_address,
        metavar="HOST:PORT",
        help="address of the balancer's management service (e.g. 127.0.0.1:8060)",
    )
    parser.add_argument("--name", default=None, help="display name of this agent in dashboards and responses")
    parser.add_argument(
        "--slots",
        required=True,
        type=positive_int,
        metavar="N",
        help="number of requests served at once (llama.cpp sequences sharing one context)",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        metavar="N",
        help="llama.cpp CPU threads (default: every core this process may use)",
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from paddler_trio.nursery.agent import run_agent

    config = AgentConfig(management_addr=args.management_addr, slots=args.slots, name=args.name, threads=args.threads)
    trio.run(functools.partial(run_agent, config))
    return 0
