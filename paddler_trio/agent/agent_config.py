"""What `paddler agent` was started with."""

from __future__ import annotations

from pathlib import Path

import attrs

from paddler_trio.cli_values import DEFAULT_CACHE_RAM_MIB, DEFAULT_SHUTDOWN_GRACE_PERIOD, SocketAddress


@attrs.frozen
class AgentConfig:
    # One or more balancers: the agent registers with each and serves requests from all of them.
    management_addrs: tuple[SocketAddress, ...]
    slots: int
    name: str | None = None
    # llama.cpp threads; None: every core this process may use.
    threads: int | None = None
    # Let a llama.cpp built with AMX use its AMX weight buffers (engine/amx_guard.py).
    allow_amx: bool = False
    # Host memory for the prompt state cache (engine/state_cache.py); 0: off.
    cache_ram_mib: int = DEFAULT_CACHE_RAM_MIB
    # Sent as `Authorization: Bearer` when joining (balancer --agent-secret).
    agent_secret: str | None = attrs.field(default=None, repr=False)
    # wss:// instead of ws://, trusting the system's CAs plus `management_ca_file`.
    management_tls: bool = False
    management_ca_file: Path | None = None
    # Seconds that the requests in flight get to finish after the first SIGINT/SIGTERM.
    shutdown_grace_period: float = DEFAULT_SHUTDOWN_GRACE_PERIOD
