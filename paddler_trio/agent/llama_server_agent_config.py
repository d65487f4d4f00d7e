"""What `paddler agent --local-llamacpp-addr` (an agent watching a llama-server) was started with."""

from __future__ import annotations

from pathlib import Path

import attrs

from paddler_trio.cli_values import SocketAddress

# Paddler's main branch (and Rower) default, 10 s, made a busy llama-server look idle for that long;
# our agents report every second.
DEFAULT_MONITORING_INTERVAL = 1.0


@attrs.frozen
class LlamaServerAgentConfig:
    # One or more balancers, as for `AgentConfig`.
    management_addrs: tuple[SocketAddress, ...]
    # Where the agent polls llama-server.
    local_llamacpp_addr: SocketAddress
    # Where the balancer reaches that llama-server (the local address unless told otherwise).
    external_llamacpp_addr: SocketAddress
    # Seconds between polls.
    monitoring_interval: float = DEFAULT_MONITORING_INTERVAL
    # Sent to llama-server as `Authorization: Bearer` (its --api-key).
    llamacpp_api_key: str | None = attrs.field(default=None, repr=False)
    name: str | None = None
    # Sent as `Authorization: Bearer` when joining (balancer --agent-secret).
    agent_secret: str | None = attrs.field(default=None, repr=False)
    management_tls: bool = False
    management_ca_file: Path | None = None
