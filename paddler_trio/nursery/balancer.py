"""The balancer's supervision tree.

    run_balancer                     SIGINT/SIGTERM -> drain, then shutdown (a second signal exits at once)
    └── serve_balancer
        ├── background nursery        state database (`keep_current`: with etcd, the first read, then
        │                             the watch), reconciliation, request forwarder (item-timeout
        │                             watch, slot drains), StatsD reporter
        └── servers nursery           inference service and reverse proxy to llama-server agents (when
                                      --reverseproxy-addr is given): our own HTTP/1.1 server, transport/http_server.py;
                                      management service, OpenAI-compatible service (when
                                      --compat-openai-addr is given), web admin panel (when
                                      --web-admin-panel-addr is given): Hypercorn's trio worker

A request's work (forwarding it, reading its replies) lives in that request's own nursery: the
inference server's per request, and on Hypercorn's ports the one `proxy/request_nursery.py`
opens around each ASGI call.

Each service is started with `nursery.start` and counts as started once it listens. Nothing
starts before the state database has been read: with etcd unreachable at start-up the balancer
waits (and logs each try); a stop signal meanwhile ends it.

Drain (the first SIGINT/SIGTERM, `run_balancer` only): new inference requests get the 503
"balancer is shutting down" envelope at once; those in flight (buffered or streaming) go on
until they end or `--shutdown-grace-period` is over.

Shutdown, then: the `ShutdownSignal` fires; every buffered or streaming request still there
answers with the 503 envelope, SSE streams end, WebSockets close with 1001, the servers stop
accepting and wait (at most `HTTP_GRACEFUL_TIMEOUT`) for their connections to finish; the
servers get `SHUTDOWN_GRACE` seconds in all before they are cancelled, then the background
work is cancelled (slot drains release their claims as they end).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import attrs
import hypercorn.trio
import trio
from hypercorn.config import Config as HypercornConfig
from quart_trio import QuartTrio

from paddler_trio.balancer_config import BalancerConfig
from paddler_trio.cli_values import SocketAddress
from paddler_trio.management.agent_socket import ACCEPT_HEADERS as AGENT_SOCKET_ACCEPT_HEADERS
from paddler_trio.management.agent_socket_route import with_agent_sockets
from paddler_trio.management.legacy_status_stream import LegacyStatusStreams
from paddler_trio.management.management_routes import ManagementService
from paddler_trio.management.reconciliation import Reconciliation
from paddler_trio.management.state_database import (
    MemoryStateDatabase,
    open_state_database,
)
from paddler_trio.management.statsd_reporter import report_to_statsd
from paddler_trio.management.web_admin_panel import (
    WebAdminPanelSettings,
    create_web_admin_panel_app,
)
from paddler_trio.nursery.idle_memory_release import (
    LoadSnapshot,
    release_memory_when_idle,
)
from paddler_trio.nursery.signals import stop_on_signals
from paddler_trio.proxy.agent_pool import AgentPool
from paddler_trio.proxy.buffer import RequestBuffer
from paddler_trio.proxy.cors_policy import CorsPolicy
from paddler_trio.proxy.forwarding import RequestForwarder
from paddler_trio.proxy.inference_routes import InferenceService
from paddler_trio.proxy.keep_alive import keeping_connections_sound
from paddler_trio.proxy.openai_routes import OpenAIService
from paddler_trio.proxy.openapi_documents import (
    inference_document,
    management_document,
    openai_document,
    serve_openapi,
)
from paddler_trio.proxy.llama_server_passage import LlamaServerPassage, upstream_client
from paddler_trio.proxy.reverse_proxy import ReverseProxyService, ReverseProxySettings
from paddler_trio.proxy.shutdown_signal import ShutdownSignal
from paddler_trio.security.api_keys import ApiKeys
from paddler_trio.security.error_shapes import openai_error
from paddler_trio.security.service_protection import agent_secret_keys, agent_socket_keys, protect_service
from paddler_trio.security.tls import server_ssl_context
from paddler_trio.transport.http_server import Route, ServerSettings, serve_http

_logger = logging.getLogger(__name__)

SHUTDOWN_GRACE = 3.0
# The servers' wait for open connections after shutdown. Our handlers end at once on shutdown;
# what this bounds on Hypercorn's ports is its WebSocket ping task, which sleeps a whole ping
# interval before it notices that its connection closed.
HTTP_GRACEFUL_TIMEOUT = 1.0
# How long a kept-alive connection of the inference port may stay idle, and a new one wait for
# its first request: longer than clients keep idle connections in their pools (httpx 5 s,
# browsers about 60 s), so that a client never sends a request on a connection the balancer
# is closing at that moment.
KEEP_ALIVE_TIMEOUT = 75.0
# The same on Hypercorn's ports: its default. Hypercorn 0.18 keeps a connection whose client has
# closed it until this timeout (its trio worker waits for the idle timer), so a long one would
# hold a socket per closed connection for that long; the OpenAI SDKs' pools (httpx) keep an
# idle connection for 5 s too, and retry a request that finds its connection closed.
HYPERCORN_KEEP_ALIVE_TIMEOUT = 5.0
WEBSOCKET_PING_INTERVAL = 3.0
# Connections waiting to be accepted: Hypercorn's 100 made a burst of a thousand clients
# connecting at once (the soak benchmark) see connection resets.
LISTEN_BACKLOG = 2048


@attrs.frozen
class BalancerAddresses:
    """Where the services listen (`host:port`; the real port when port 0 was asked for)."""

    inference: str
    management: str
    compat_openai: str | None = None
    web_admin_panel: str | None = None
    reverseproxy: str | None = None


async def run_balancer(
    config: BalancerConfig, *, task_status: trio.TaskStatus[BalancerAddresses] = trio.TASK_STATUS_IGNORED
) -> None:
    """The balancer, until SIGINT or SIGTERM asks it to stop."""
    state_database = _open_state_database(config)
    shutdown = ShutdownSignal()
    async with trio.open_nursery() as nursery:
        await nursery.start(stop_on_signals, shutdown.begin_drain)
        await _serve(config, state_database, shutdown, shut_down_after_draining=True, task_status=task_status)
        nursery.cancel_scope.cancel()


async def serve_balancer(
    config: BalancerConfig,
    shutdown: ShutdownSignal,
    *,
    task_status: trio.TaskStatus[BalancerAddresses] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The balancer, until `shutdown` fires (for embedding it in a larger Trio program, and for tests).
    `shutdown.begin_drain()` makes it refuse new requests; the embedder fires `shutdown.trigger()`."""
    await _serve(config, _open_state_database(config), shutdown, shut_down_after_draining=False, task_status=task_status)


def _open_state_database(config: BalancerConfig) -> MemoryStateDatabase:
    """Refuses a state database this balancer cannot use (`StateDatabaseError`), before anything starts."""
    return open_state_database(config.state_database)


async def _serve(
    config: BalancerConfig,
    state_database: MemoryStateDatabase,
    shutdown: ShutdownSignal,
    *,
    shut_down_after_draining: bool,
    task_status: trio.TaskStatus[BalancerAddresses],
) -> None:
    pool = AgentPool(config.routing_policy)
    buffer = RequestBuffer(
        pool,
        max_buffered_requests=config.max_buffered_requests,
        buffered_request_timeout=config.buffered_request_timeout,
    )
    reconciliation = Reconciliation(state_database, pool)
    try:
        async with trio.open_nursery() as background:
            if not await _start_state_database(background, state_database, shutdown):
                return
            await background.start(reconciliation.run)
            forwarder = RequestForwarder(buffer=buffer, shutdown=shutdown, item_timeout=config.inference_item_timeout)
            await background.start(forwarder.run)
            if shut_down_after_draining:
                background.start_soon(_shut_down_after_draining, shutdown, config.shutdown_grace_period)
            management = ManagementService(
                pool=pool,
                buffer=buffer,
                state_database=state_database,
                reconciliation=reconciliation,
                shutdown=shutdown,
                metrics_prefix=config.statsd_prefix,
            )
            inference = InferenceService(
                forwarder=forwarder,
                pool=pool,
                cluster=reconciliation,
                shutdown=shutdown,
                keys=ApiKeys.of(config.inference_api_keys),
                cors=CorsPolicy.of(config.inference_cors_origins),
                openapi_document=inference_document(config.max_tokens_limit),
                max_tokens_limit=config.max_tokens_limit,
                max_requests_per_socket=config.max_requests_per_inference_socket,
                stream_gather_interval=config.stream_gather_interval,
            )
            async with upstream_client() as llama_server_client, trio.open_nursery() as servers:
                passage = LlamaServerPassage(
                    pool=pool, buffer=buffer, client=llama_server_client, rewrite_host_header=config.rewrite_host_header
                )
                management_app = protect_service(
                    serve_openapi(management.create_app(config.management_cors_origins), management_document()),
                    config,
                    service="management",
                    keys=config.management_api_keys,
                    keys_by_path_prefix=agent_socket_keys(config),
                )
                # Agents report on the management port ahead of Quart: ours (and Paddler 4.x's) on the
                # agents' socket, unmodified Paddler 1.x and Rower agents on their HTTP status streams.
                legacy_status_streams = LegacyStatusStreams(pool, shutdown, agent_secret_keys(config))
                management_bound = await servers.start(
                    _serve_http,
                    "management",
                    legacy_status_streams.wrap(
                        with_agent_sockets(
                            management_app, management.agent_socket, agent_secret_keys(config), AGENT_SOCKET_ACCEPT_HEADERS
                        )
                    ),
                    config.management_addr,
                    shutdown,
                    config,
                )
                inference_bound = await servers.start(
                    _serve_own_http, "inference", inference.handle, config.inference_addr, config, shutdown
                )
                openai_bound = None
                if config.compat_openai_addr is not None:
                    openai = OpenAIService(forwarder=forwarder, pool=pool, cluster=reconciliation, passage=passage)
                    openai_bound = await servers.start(
                        _serve_http,
                        "openai",
                        protect_service(
                            serve_openapi(
                                openai.create_app(config.inference_cors_origins), openai_document(config.max_tokens_limit)
                            ),
                            config,
                            service="openai",
                            keys=config.inference_api_keys,
                            error_shape=openai_error,
                        ),
                        config.compat_openai_addr,
                        shutdown,
                        config,
                    )
                reverseproxy_bound = None
                if config.reverseproxy_addr is not None:
                    reverseproxy = ReverseProxyService(
                        passage=passage,
                        shutdown=shutdown,
                        settings=ReverseProxySettings(
                            keys=ApiKeys.of(config.reverseproxy_api_keys), slots_endpoint_enabled=config.slots_endpoint_enabled
                        ),
                    )
                    reverseproxy_bound = await servers.start(
                        _serve_own_http, "reverse proxy", reverseproxy.handle, config.reverseproxy_addr, config, shutdown
                    )
                panel_bound = None
                if config.web_admin_panel_addr is not None:
                    panel_settings = WebAdminPanelSettings.from_config(
                        config,
                        inference_addr=inference_bound,
                        management_addr=management_bound,
                        compat_openai_addr=None if config.compat_openai_addr is None else config.compat_openai_addr.text,
                    )
                    panel_bound = await servers.start(
                        _serve_http,
                        "web_admin_panel",
                        create_web_admin_panel_app(panel_settings),
                        config.web_admin_panel_addr,
                        shutdown,
                        config,
                    )
                await background.start(
                    release_memory_when_idle,
                    lambda: LoadSnapshot(
                        in_flight=pool.slots_processing, buffered=buffer.current, tokens_relayed=pool.generated_tokens
                    ),
                )
                if config.statsd_addr is not None:
                    await background.start(
                        functools.partial(
                            report_to_statsd,
                            config.statsd_addr,
                            prefix=config.statsd_prefix,
                            interval=config.statsd_reporting_interval,
                            pool=pool,
                            buffer=buffer,
                        )
                    )
                task_status.started(
                    BalancerAddresses(
                        inference=inference_bound, management=management_bound, compat_openai=openai_bound,
                        web_admin_panel=panel_bound,
                        reverseproxy=reverseproxy_bound,
                    )
                )
                await shutdown.wait()
                _logger.info("shutting down")
                servers.cancel_scope.deadline = trio.current_time() + SHUTDOWN_GRACE
            background.cancel_scope.cancel()
    finally:
        buffer.close()
    _logger.info("balancer stopped")


async def _start_state_database(
    background: trio.Nursery, state_database: MemoryStateDatabase, shutdown: ShutdownSignal
) -> bool:
    """Start `state_database.keep_current` in `background`. It reads the state first, which waits while
    a shared store (etcd) cannot be reached: False when a stop signal came first."""
    started = False
    async with trio.open_nursery() as reading:
        reading.start_soon(_cancel_when_draining, shutdown, reading.cancel_scope)
        await background.start(state_database.keep_current)
        started = True
        reading.cancel_scope.cancel()
    if not started:
        _logger.info("stopped before the state database could be read")
    return started


async def _cancel_when_draining(shutdown: ShutdownSignal, scope: trio.CancelScope) -> None:
    await shutdown.wait_for_drain()
    scope.cancel()


async def _serve_http(
    name: str,
    app: QuartTrio,
    address: SocketAddress,
    shutdown: ShutdownSignal,
    balancer_config: BalancerConfig,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` with Hypercorn."""
    config = HypercornConfig()
    host = f"[{address.host}]" if ":" in address.host else address.host
    config.bind = [f"{host}:{address.port}"]
    config.keep_alive_timeout = HYPERCORN_KEEP_ALIVE_TIMEOUT
    config.backlog = LISTEN_BACKLOG
    config.graceful_timeout = HTTP_GRACEFUL_TIMEOUT
    config.websocket_ping_interval = WEBSOCKET_PING_INTERVAL
    config.websocket_max_message_size = balancer_config.websocket_max_message_bytes
    if balancer_config.tls_certfile is not None:
        config.certfile = str(balancer_config.tls_certfile)
        config.keyfile = str(balancer_config.tls_keyfile)
    config.accesslog = None
    config.errorlog = logging.getLogger(f"{__name__}.{name}_http")
    async with trio.open_nursery() as nursery:
        serve = functools.partial(hypercorn.trio.serve, keeping_connections_sound(app), config, shutdown_trigger=shutdown.wait)
        binds: list[str] = await nursery.start(serve)
        scheme, _, bound = binds[0].partition("://")
        _logger.info("%s service listening on %s://%s", name, scheme, bound)
        task_status.started(bound)


async def _serve_own_http(
    name: str,
    route: Route,
    address: SocketAddress,
    config: BalancerConfig,
    shutdown: ShutdownSignal,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """`route` on our own HTTP server (`transport/http_server.py`): the ports where every chunk of
    a stream is one write (the inference port, the reverse proxy)."""
    listeners: list[trio.abc.Listener[Any]] = list(
        await trio.open_tcp_listeners(address.port, host=address.host, backlog=LISTEN_BACKLOG)
    )
    host, port, *_ = listeners[0].socket.getsockname()  # type: ignore[attr-defined]
    bound = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    scheme = "http"
    if config.tls_certfile is not None:
        context = server_ssl_context(config.tls_certfile, config.tls_keyfile)
        listeners = [trio.SSLListener(listener, context, https_compatible=True) for listener in listeners]
        scheme = "https"
    settings = ServerSettings(
        max_body_bytes=config.max_request_body_bytes,
        keep_alive_timeout=KEEP_ALIVE_TIMEOUT,
        graceful_timeout=HTTP_GRACEFUL_TIMEOUT,
        websocket_max_message_bytes=config.websocket_max_message_bytes,
        websocket_ping_interval=WEBSOCKET_PING_INTERVAL,
    )
    _logger.info("%s service listening on %s://%s", name, scheme, bound)
    task_status.started(bound)
    await serve_http(route, listeners, settings, shutdown=shutdown.wait)


async def _shut_down_after_draining(shutdown: ShutdownSignal, grace_period: float) -> None:
    """Once the drain begins, let the requests in flight finish (for at most `grace_period`
    seconds), then shut down."""
    await shutdown.wait_for_drain()
    if shutdown.requests_in_flight and not shutdown.triggered:
        _logger.info(
            "draining: waiting up to %.1f s for %d requests in flight to finish",
            grace_period,
            shutdown.requests_in_flight,
        )
        with trio.move_on_after(grace_period) as waiting:
            await shutdown.wait_until_none_in_flight()
        if waiting.cancelled_caught:
            _logger.warning(
                "shutdown grace period (%.1f s) is over: ending %d requests still in flight",
                grace_period,
                shutdown.requests_in_flight,
            )
    shutdown.trigger()
