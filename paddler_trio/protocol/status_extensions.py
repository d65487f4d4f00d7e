"""Fields of an agent's status that Paddler does not have: our extension of the status snapshot
agents send (`RegisterAgent`, `UpdateAgentStatus`), shown per agent in `/api/v1/agents`.

Our agents report their prompt state cache (`STATUS_EXTENSION_FIELDS`: states held, bytes used,
the byte limit set by `--cache-ram-mib`) and the multimodal projection (mmproj) file they have
loaded with the model (`multimodal_projection_path`; None while none is). Paddler's balancer decodes the snapshot with
`deny_unknown_fields`: a snapshot holding any of these keys fails to decode there. So an agent
sends them only to a balancer that offered them: our balancer's answer to the agent socket's
upgrade carries `STATUS_EXTENSIONS_HEADER`, Paddler's never does. Our balancer reads snapshots
with or without them (a Paddler agent's have none), and `/api/v1/agents` carries them only for
agents that report them: for every other agent the JSON stays exactly Paddler's.
"""

from __future__ import annotations

from collections.abc import Iterable

STATUS_EXTENSIONS_HEADER = "x-paddler-trio-status-extensions"
# Version 1: the cache fields; version 2 adds `multimodal_projection_path`. An agent and a balancer
# of different versions use no extensions (each side decodes the other's snapshots strictly).
STATUS_EXTENSIONS_VERSION = "2"

STATUS_EXTENSION_FIELDS = ("cache_states", "cache_used_bytes", "cache_limit_bytes", "multimodal_projection_path")


def offers_status_extensions(handshake_headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether the balancer's upgrade response offers the extensions."""
    name = STATUS_EXTENSIONS_HEADER.encode()
    version = STATUS_EXTENSIONS_VERSION.encode()
    return any(key.lower() == name and value.strip() == version for key, value in handshake_headers)
