"""What `paddler agent` was started with."""

from __future__ import annotations

import attrs

from paddler_trio.cli_values import SocketAddress


@attrs.frozen
class AgentConfig:
    management_addr: SocketAddress
    slots: int
    name: str | None = None
    # llama.cpp threads; None: every core this process may use.
    threads: int | None = None

    @property
    def agent_socket_base_url(self) -> str:
        """`ws://HOST:PORT/api/v1/agent_socket/` (the agent id follows)."""
        host = self.management_addr.host
        if ":" in host:
            host = f"[{host}]"
        return f"ws://{host}:{self.management_addr.port}/api/v1/agent_socket/"
