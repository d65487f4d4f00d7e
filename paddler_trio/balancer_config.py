"""Everything `paddler balancer` is told on its command line (spec 1.2), as one value."""

from __future__ import annotations

from pathlib import Path

import attrs

from paddler_trio.cli_values import DEFAULT_SHUTDOWN_GRACE_PERIOD, SocketAddress
from paddler_trio.routing_policy import RoutingPolicy

DEFAULT_MAX_REQUEST_BODY_BYTES = 50 * 1024 * 1024
DEFAULT_WEBSOCKET_MAX_MESSAGE_BYTES = 50 * 1024 * 1024
# Paddler's own bound: max_tokens is an i32 there, and its clients ask for i32::MAX to generate
# until the model stops or the context is full. Operators lower it to cap one request.
DEFAULT_MAX_TOKENS_LIMIT = 2**31 - 1
DEFAULT_MAX_REQUESTS_PER_INFERENCE_SOCKET = 64
# Tokens of one NDJSON stream that follow each other closer than this are written together.
DEFAULT_STREAM_GATHER_INTERVAL = 0.02


@attrs.frozen(kw_only=True)
class BalancerConfig:
    inference_addr: SocketAddress
    management_addr: SocketAddress
    compat_openai_addr: SocketAddress | None = None
    web_admin_panel_addr: SocketAddress | None = None
    # The reverse proxy in front of llama-server agents (proxy/reverse_proxy.py).
    reverseproxy_addr: SocketAddress | None = None
    rewrite_host_header: bool = False
    slots_endpoint_enabled: bool = False
    # Durations in seconds (given in integer milliseconds on the command line).
    buffered_request_timeout: float = 10.0
    inference_item_timeout: float = 30.0
    stream_gather_interval: float = DEFAULT_STREAM_GATHER_INTERVAL
    # After the first SIGINT/SIGTERM: new requests get 503, those in flight this long to finish.
    shutdown_grace_period: float = DEFAULT_SHUTDOWN_GRACE_PERIOD
    max_buffered_requests: int = 30
    routing_policy: RoutingPolicy = RoutingPolicy.CACHE_AWARE
    inference_cors_allowed_hosts: tuple[str, ...] = ()
    management_cors_allowed_hosts: tuple[str, ...] = ()
    state_database: str = "memory://"
    statsd_addr: SocketAddress | None = None
    statsd_prefix: str = "paddler_"
    statsd_reporting_interval: float = 10.0
    # Security (docs/security.md): no keys = open, as Paddler is.
    inference_api_keys: tuple[str, ...] = attrs.field(default=(), repr=False)
    management_api_keys: tuple[str, ...] = attrs.field(default=(), repr=False)
    reverseproxy_api_keys: tuple[str, ...] = attrs.field(default=(), repr=False)
    agent_secret: str | None = attrs.field(default=None, repr=False)
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None
    # Limits (docs/operations.md).
    max_request_body_bytes: int = DEFAULT_MAX_REQUEST_BODY_BYTES
    websocket_max_message_bytes: int = DEFAULT_WEBSOCKET_MAX_MESSAGE_BYTES
    max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT
    max_requests_per_inference_socket: int = DEFAULT_MAX_REQUESTS_PER_INFERENCE_SOCKET

    def _admin_panel_origins(self) -> tuple[str, ...]:
        return () if self.web_admin_panel_addr is None else (f"http://{self.web_admin_panel_addr.text}",)

    @property
    def inference_cors_origins(self) -> list[str]:
        """The configured origins, plus the admin panel's (it talks to this service from the browser)."""
        return [*self.inference_cors_allowed_hosts, *self._admin_panel_origins()]

    @property
    def management_cors_origins(self) -> list[str]:
        return [*self.management_cors_allowed_hosts, *self._admin_panel_origins()]
