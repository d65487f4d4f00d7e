"""`paddler balancer`: the inference and management services in front of the agents (spec 1.2)."""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

from paddler_trio.balancer_config import (
    DEFAULT_MAX_REQUEST_BODY_BYTES,
    DEFAULT_MAX_REQUESTS_PER_INFERENCE_SOCKET,
    DEFAULT_MAX_TOKENS_LIMIT,
    DEFAULT_STREAM_GATHER_INTERVAL,
    DEFAULT_WEBSOCKET_MAX_MESSAGE_BYTES,
    BalancerConfig,
)
from paddler_trio.cli_values import DEFAULT_SHUTDOWN_GRACE_PERIOD, milliseconds, positive_int, socket_address
from paddler_trio.environment_variables import AGENT_SECRET, INFERENCE_API_KEY, MANAGEMENT_API_KEY, REVERSEPROXY_API_KEY
from paddler_trio.routing_policy import RoutingPolicy


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
            "Run the balancer: the inference service (NDJSON and WebSocket) dispatches requests to an "
            "agent with a free slot (--routing-policy), buffering them while no slot is free; the management service is where agents "
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
        "--stream-gather-interval",
        type=milliseconds,
        default=milliseconds(str(round(DEFAULT_STREAM_GATHER_INTERVAL * 1000))),
        metavar="MS",
        help="tokens of one stream (NDJSON or inference socket) that come closer together than this are written "
        "to the client together (the first token, any after a pause, and the stream's end go at once); 0 writes every "
        "token on its own "
        f"(default: {round(DEFAULT_STREAM_GATHER_INTERVAL * 1000)})",
    )
    parser.add_argument(
        "--shutdown-grace-period",
        type=milliseconds,
        default=DEFAULT_SHUTDOWN_GRACE_PERIOD,
        metavar="MS",
        help="after the first SIGINT/SIGTERM, new inference requests get 503 and those in flight (buffered or "
        "streaming) may take this long to finish before the balancer stops; 0 stops at once, as Paddler does "
        f"(default: {DEFAULT_SHUTDOWN_GRACE_PERIOD * 1000:.0f}); a second signal exits at once",
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
        "--routing-policy",
        choices=[policy.value for policy in RoutingPolicy],
        default=RoutingPolicy.CACHE_AWARE.value,
        help="how a request's agent is chosen among those with a free slot: cache-aware (default) prefers the "
        "agent most likely to hold the longest prefix of the request in its prompt cache, unless it is more than "
        "a quarter of its slots busier than the least busy agent; least-busy is Paddler's rule (lowest share of "
        "busy slots, ties in turn)",
    )
    parser.add_argument(
        "--state-database",
        default="memory://",
        metavar="URL",
        help="where the desired state is kept: memory:// (default, lost on exit), file:///absolute/path.json "
        "(kept across restarts; created with the default state when missing) or "
        "etcd://HOST:PORT[,HOST:PORT...]/PREFIX (in etcd, shared by every balancer naming the same etcd and prefix; "
        "the balancer waits for etcd at start-up and keeps serving its last state while etcd is away; docs/deployment.md)",
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
        help="serve the web admin panel on this address (default: off); http://HOST:PORT is also added to "
        "the CORS origins of the inference and management services, which the panel calls from the browser",
    )
    _add_reverse_proxy_arguments(parser)
    _add_security_arguments(parser)
    parser.set_defaults(handler=functools.partial(_run, parser))


def _add_reverse_proxy_arguments(parser: argparse.ArgumentParser) -> None:
    """Paddler 1.x's reverse proxy in front of llama-server agents (docs/llama_server_agents.md)."""
    proxy = parser.add_argument_group(
        "reverse proxy", "Paddler 1.x / Rower mode: HTTP passed through to the llama-servers that llama-server agents watch"
    )
    proxy.add_argument(
        "--reverseproxy-addr",
        type=socket_address,
        default=None,
        metavar="HOST:PORT",
        help="pass any HTTP request on this address through to a llama-server agent's llama-server: generation and "
        "embedding routes to the least busy one with a free slot (buffered like inference requests), others to any "
        "healthy one (default: off)",
    )
    proxy.add_argument(
        "--rewrite-host-header",
        action="store_true",
        help="send llama-server its own address as the Host header, not the client's",
    )
    proxy.add_argument(
        "--slots-endpoint-enable",
        action="store_true",
        help="pass /slots through to one llama-server (refused with 403 otherwise: it shows every slot's prompt)",
    )


def _add_security_arguments(parser: argparse.ArgumentParser) -> None:
    """Keys, the agent secret, TLS and limits (docs/security.md, docs/operations.md)."""
    security = parser.add_argument_group(
        "security", "keys may also come from files (one per line) or environment variables, to keep them out of ps"
    )
    covered_by_service = {
        "inference": ("the inference and OpenAI-compatible services", INFERENCE_API_KEY.name),
        "management": ("the management service", MANAGEMENT_API_KEY.name),
        "reverseproxy": ("the reverse proxy (Authorization still goes on to llama-server)", REVERSEPROXY_API_KEY.name),
    }
    for service, (covered, variable) in covered_by_service.items():
        security.add_argument(
            f"--{service}-api-key",
            action="append",
            default=[],
            metavar="KEY",
            help=f"require 'Authorization: Bearer KEY' on {covered} (except /health); repeatable; "
            f"also ${variable} (comma-separated). No key: open, as Paddler is",
        )
        security.add_argument(
            f"--{service}-api-key-file",
            action="append",
            default=[],
            type=Path,
            metavar="PATH",
            help=f"file of {service} API keys, one per line; repeatable",
        )
    security.add_argument(
        "--agent-secret",
        default=None,
        metavar="SECRET",
        help=f"agents must send this secret to join (paddler agent --agent-secret); also ${AGENT_SECRET.name}",
    )
    security.add_argument(
        "--agent-secret-file", type=Path, default=None, metavar="PATH", help="file holding the agent secret"
    )
    security.add_argument(
        "--tls-certfile", type=Path, default=None, metavar="PATH", help="serve every service over TLS with this certificate (PEM)"
    )
    security.add_argument("--tls-keyfile", type=Path, default=None, metavar="PATH", help="private key of --tls-certfile (PEM)")
    limits = parser.add_argument_group("limits")
    limits.add_argument(
        "--max-request-body-bytes",
        type=positive_int,
        default=DEFAULT_MAX_REQUEST_BODY_BYTES,
        metavar="N",
        help=f"largest HTTP request body, beyond which the 413 error (default: {DEFAULT_MAX_REQUEST_BODY_BYTES})",
    )
    limits.add_argument(
        "--websocket-max-message-bytes",
        type=positive_int,
        default=DEFAULT_WEBSOCKET_MAX_MESSAGE_BYTES,
        metavar="N",
        help="largest WebSocket message; a bigger one closes the socket with 1009 "
        f"(default: {DEFAULT_WEBSOCKET_MAX_MESSAGE_BYTES})",
    )
    limits.add_argument(
        "--max-tokens-limit",
        type=positive_int,
        default=DEFAULT_MAX_TOKENS_LIMIT,
        metavar="N",
        help="largest max_tokens a request may ask for, beyond which the 400 error "
        f"(default: {DEFAULT_MAX_TOKENS_LIMIT}, Paddler's i32 bound)",
    )
    limits.add_argument(
        "--max-requests-per-inference-socket",
        type=positive_int,
        default=DEFAULT_MAX_REQUESTS_PER_INFERENCE_SOCKET,
        metavar="N",
        help="most requests in flight on one inference WebSocket; one more gets the 429 error envelope "
        f"(default: {DEFAULT_MAX_REQUESTS_PER_INFERENCE_SOCKET})",
    )


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from paddler_trio.management.state_database import StateDatabaseError
    from paddler_trio.nursery.balancer import run_balancer
    from paddler_trio.nursery.signals import run_until_stopped

    from paddler_trio.security.secret_sources import SecretSourceError, collect_keys, collect_secret

    if args.statsd_reporting_interval <= 0:
        parser.error("--statsd-reporting-interval must be at least 1 ms")
    if (args.tls_certfile is None) != (args.tls_keyfile is None):
        parser.error("--tls-certfile and --tls-keyfile go together")
    try:
        inference_api_keys = collect_keys(args.inference_api_key, args.inference_api_key_file, INFERENCE_API_KEY)
        management_api_keys = collect_keys(args.management_api_key, args.management_api_key_file, MANAGEMENT_API_KEY)
        reverseproxy_api_keys = collect_keys(args.reverseproxy_api_key, args.reverseproxy_api_key_file, REVERSEPROXY_API_KEY)
        agent_secret = collect_secret(args.agent_secret, args.agent_secret_file, AGENT_SECRET)
    except SecretSourceError as error:
        parser.error(str(error))
    config = BalancerConfig(
        inference_addr=args.inference_addr,
        management_addr=args.management_addr,
        compat_openai_addr=args.compat_openai_addr,
        web_admin_panel_addr=args.web_admin_panel_addr,
        reverseproxy_addr=args.reverseproxy_addr,
        rewrite_host_header=args.rewrite_host_header,
        slots_endpoint_enabled=args.slots_endpoint_enable,
        buffered_request_timeout=args.buffered_request_timeout,
        inference_item_timeout=args.inference_item_timeout,
        shutdown_grace_period=args.shutdown_grace_period,
        stream_gather_interval=args.stream_gather_interval,
        max_buffered_requests=args.max_buffered_requests,
        routing_policy=RoutingPolicy(args.routing_policy),
        inference_cors_allowed_hosts=tuple(args.inference_cors_allowed_host),
        management_cors_allowed_hosts=tuple(args.management_cors_allowed_host),
        state_database=args.state_database,
        statsd_addr=args.statsd_addr,
        statsd_prefix=args.statsd_prefix,
        statsd_reporting_interval=args.statsd_reporting_interval,
        inference_api_keys=inference_api_keys,
        management_api_keys=management_api_keys,
        reverseproxy_api_keys=reverseproxy_api_keys,
        agent_secret=agent_secret,
        tls_certfile=args.tls_certfile,
        tls_keyfile=args.tls_keyfile,
        max_request_body_bytes=args.max_request_body_bytes,
        websocket_max_message_bytes=args.websocket_max_message_bytes,
        max_tokens_limit=args.max_tokens_limit,
        max_requests_per_inference_socket=args.max_requests_per_inference_socket,
    )
    try:
        return run_until_stopped(functools.partial(run_balancer, config))
    except StateDatabaseError as error:
        print(f"paddler balancer: error: {error}", file=sys.stderr)
        return 2
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if all(isinstance(leaf, StateDatabaseError) for leaf in leaves):
            print(f"paddler balancer: error: {leaves[0]}", file=sys.stderr)  # e.g. an etcd key holding no valid state
            return 2
        if all(isinstance(leaf, OSError) for leaf in leaves):
            print(f"paddler balancer: error: {leaves[0]}", file=sys.stderr)  # e.g. address already in use
            return 1
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    return [
        leaf
        for error in group.exceptions
        for leaf in (_leaves(error) if isinstance(error, BaseExceptionGroup) else [error])
    ]
