"""The balancer's view of its agents (``GET /api/v1/agents`` and its SSE stream)."""

from __future__ import annotations

import attrs

from paddler_trio.protocol.agent_issue import AgentIssue
from paddler_trio.protocol.agent_kind import AgentKind, LegacyStatusStream
from paddler_trio.protocol.llama_server_status import LlamaServerStatus
from paddler_trio.protocol.state_application_status import StateApplicationStatus


@attrs.frozen(kw_only=True)
class AgentControllerSnapshot:
    """One agent. ``slots_processing`` is the balancer's own dispatch count, not the agent's; for a
    ``llama_server`` agent, the larger of that count and the busy slots llama-server reports (its
    clients may reach it directly).

    Ours, beyond Paddler's fields: ``kind``; ``llama_server`` (left out when None) for the
    ``llama_server`` kind; ``legacy_status_stream`` (left out when None) for an unmodified
    Paddler 1.x or Rower agent reporting over an HTTP status stream."""

    desired_slots_total: int
    download_current: int
    download_filename: str | None = None
    download_indeterminate: bool
    download_total: int
    id: str
    issues: frozenset[AgentIssue]
    model_path: str | None = None
    name: str | None = None
    slots_processing: int
    slots_total: int
    state_application_status: StateApplicationStatus
    uses_chat_template_override: bool
    # As the agent reports them (`status_extensions.py`); None (left out of the JSON) for agents
    # that do not, such as Paddler's.
    cache_states: int | None = None
    cache_used_bytes: int | None = None
    cache_limit_bytes: int | None = None
    multimodal_projection_path: str | None = None
    kind: AgentKind = AgentKind.ENGINE
    llama_server: LlamaServerStatus | None = None
    legacy_status_stream: LegacyStatusStream | None = None


@attrs.frozen
class AgentControllerPoolSnapshot:
    """``{"agents": [AgentControllerSnapshot, ...]}``."""

    agents: tuple[AgentControllerSnapshot, ...]
