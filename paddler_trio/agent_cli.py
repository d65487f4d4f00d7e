"""`paddler agent`: join a balancer and serve its requests with llama.cpp."""

from __future__ import annotations

import argparse
import faulthandler
import functools
from pathlib import Path

from paddler_trio.agent.agent_config import AgentConfig
from paddler_trio.agent.llama_server_agent_config import DEFAULT_MONITORING_INTERVAL, LlamaServerAgentConfig
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
from paddler_trio.environment_variables import AGENT_SECRET


def add_parser(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "agent",
        help="join a balancer and serve its requests with llama.cpp",
        description=(
            "Run an agent: it connects to the balancer's management service, receives the model and "
            "inference parameters from the balancer's desired state, and serves up to --slots requests at "
            "once with continuous batching. The first SIGINT/SIGTERM drains it (no new requests, those in flight "
            "finish within --shutdown-grace-period), then it deregisters and exits 0; a second one exits at once. "
            "With --local-llamacpp-addr it instead watches a separately started llama-server (Paddler 1.x's mode): "
            "it polls its /slots and reports its slots, model and problems to the balancer."
        ),
    )
    parser.add_argument(
        "--management-addr",
        required=True,
        action="append",
        type=socket_address,
        metavar="HOST:PORT",
        help=(
            "address of the balancer's management service (e.g. 127.0.0.1:8060); repeat it to serve several "
            "balancers at once: the agent registers with each and tells each how many slots are free for it"
        ),
    )
    parser.add_argument("--name", default=None, help="display name of this agent in dashboards and responses")
    parser.add_argument(
        "--slots",
        type=positive_int,
        metavar="N",
        help="number of requests served at once (llama.cpp sequences sharing one context); required unless "
        "--local-llamacpp-addr is given",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        metavar="N",
        help="llama.cpp CPU threads (default: every core this process may use)",
    )
    parser.add_argument(
        "--cache-ram-mib", type=non_negative_int, default=DEFAULT_CACHE_RAM_MIB, metavar="N", help=CACHE_RAM_MIB_HELP
    )
    parser.add_argument("--allow-amx", action="store_true", help=ALLOW_AMX_HELP)
    parser.add_argument(
        "--shutdown-grace-period",
        type=milliseconds,
        default=DEFAULT_SHUTDOWN_GRACE_PERIOD,
        metavar="MS",
        help=(
            "after the first SIGINT/SIGTERM, how long the requests in flight may take to finish while the agent "
            f"takes no new ones, in milliseconds (default: {DEFAULT_SHUTDOWN_GRACE_PERIOD * 1000:.0f}, within "
            "Kubernetes' 30 s termination grace); a second signal exits at once"
        ),
    )
    parser.add_argument(
        "--agent-secret",
        default=None,
        metavar="SECRET",
        help=f"the balancer's --agent-secret, sent when joining; also ${AGENT_SECRET.name}",
    )
    parser.add_argument("--agent-secret-file", type=Path, default=None, metavar="PATH", help="file holding the agent secret")
    parser.add_argument(
        "--management-tls",
        action="store_true",
        help="connect with wss:// (the balancer runs with --tls-certfile)",
    )
    parser.add_argument(
        "--management-ca-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="also trust this CA certificate (PEM) for --management-tls, e.g. for a self-signed balancer certificate",
    )
    watching = parser.add_argument_group(
        "watching a llama-server",
        "Paddler 1.x's mode: llama-server (llama.cpp's HTTP server) runs on its own, with -np N slots and its "
        "/slots endpoint (on by default; --no-slots turns it off); the agent only reports on it.",
    )
    watching.add_argument(
        "--local-llamacpp-addr",
        type=socket_address,
        metavar="HOST:PORT",
        help="address where the agent polls llama-server (GET /slots, /props), e.g. 127.0.0.1:8080",
    )
    watching.add_argument(
        "--external-llamacpp-addr",
        type=socket_address,
        metavar="HOST:PORT",
        help="address where the balancer reaches that llama-server (default: --local-llamacpp-addr)",
    )
    watching.add_argument(
        "--llamacpp-api-key",
        "--local-llamacpp-api-key",  # the name in Paddler 1.x's README
        dest="llamacpp_api_key",
        metavar="KEY",
        help="llama-server's --api-key, sent to it as Authorization: Bearer",
    )
    watching.add_argument(
        "--monitoring-interval",
        type=milliseconds,
        metavar="MS",
        help=(
            f"time between two polls of llama-server, in milliseconds (default: {DEFAULT_MONITORING_INTERVAL * 1000:.0f}; "
            "Paddler 1.x's was 10000); each poll keeps llama-server from going to sleep (--sleep-idle-seconds)"
        ),
    )
    parser.set_defaults(handler=functools.partial(_run, parser))


_ENGINE_ONLY_FLAGS = ("slots", "threads", "allow_amx")
_LLAMA_SERVER_ONLY_FLAGS = ("external_llamacpp_addr", "llamacpp_api_key", "monitoring_interval")


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from paddler_trio.nursery.agent import run_agent
    from paddler_trio.nursery.signals import run_until_stopped
    from paddler_trio.security.secret_sources import SecretSourceError, collect_secret

    # A crash inside llama.cpp kills the process without a Python traceback; this prints the
    # signal and every thread's Python stack to stderr first (docs/operations.md).
    faulthandler.enable()

    watching = args.local_llamacpp_addr is not None
    if watching:
        given = [name for name in _ENGINE_ONLY_FLAGS if getattr(args, name) not in (None, False)]
        if given:
            parser.error(
                f"--{given[0].replace('_', '-')} is for an agent that runs llama.cpp itself; with --local-llamacpp-addr "
                "llama-server has its own (-np for its slots, -t for its threads)"
            )
    else:
        given = [name for name in _LLAMA_SERVER_ONLY_FLAGS if getattr(args, name) is not None]
        if given:
            parser.error(f"--{given[0].replace('_', '-')} needs --local-llamacpp-addr (the llama-server to watch)")
        if args.slots is None:
            parser.error("--slots is required (or --local-llamacpp-addr, to watch a llama-server instead)")
    if args.monitoring_interval is not None and args.monitoring_interval <= 0:
        parser.error("--monitoring-interval must be at least 1 (millisecond)")
    if args.management_ca_file is not None and not args.management_tls:
        parser.error("--management-ca-file needs --management-tls")
    if args.management_ca_file is not None and not args.management_ca_file.is_file():
        parser.error(f"--management-ca-file {args.management_ca_file} is not a readable file")
    try:
        agent_secret = collect_secret(args.agent_secret, args.agent_secret_file, AGENT_SECRET)
    except SecretSourceError as error:
        parser.error(str(error))
    if len(set(args.management_addr)) != len(args.management_addr):
        parser.error("--management-addr names the same balancer twice")
    if watching:
        return _run_watching(args, agent_secret)
    config = AgentConfig(
        management_addrs=tuple(args.management_addr),
        slots=args.slots,
        name=args.name,
        threads=args.threads,
        allow_amx=args.allow_amx,
        cache_ram_mib=args.cache_ram_mib,
        shutdown_grace_period=args.shutdown_grace_period,
        agent_secret=agent_secret,
        management_tls=args.management_tls,
        management_ca_file=args.management_ca_file,
    )
    return run_until_stopped(functools.partial(run_agent, config))


def _run_watching(args: argparse.Namespace, agent_secret: str | None) -> int:
    from paddler_trio.nursery.llama_server_agent import run_llama_server_agent
    from paddler_trio.nursery.signals import run_until_stopped

    config = LlamaServerAgentConfig(
        management_addrs=tuple(args.management_addr),
        local_llamacpp_addr=args.local_llamacpp_addr,
        external_llamacpp_addr=args.external_llamacpp_addr or args.local_llamacpp_addr,
        monitoring_interval=(
            DEFAULT_MONITORING_INTERVAL if args.monitoring_interval is None else args.monitoring_interval
        ),
        llamacpp_api_key=args.llamacpp_api_key,
        name=args.name,
        agent_secret=agent_secret,
        management_tls=args.management_tls,
        management_ca_file=args.management_ca_file,
    )
    return run_until_stopped(functools.partial(run_llama_server_agent, config))
