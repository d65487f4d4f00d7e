"""An agent's whole status, sent in ``RegisterAgent`` and ``UpdateAgentStatus`` notifications."""

from __future__ import annotations

import attrs

from paddler_trio.protocol.agent_issue import AgentIssue
from paddler_trio.protocol.llama_server_status import LlamaServerStatus
from paddler_trio.protocol.state_application_status import StateApplicationStatus


@attrs.frozen(kw_only=True)
class SlotAggregatedStatusSnapshot:
    """Paddler's ``SlotAggregatedStatusSnapshot``; ``issues`` is emitted sorted.

    ``version`` increases with every change; the balancer ignores snapshots older than the newest it saw.
    ``llama_server`` (ours, left out of the JSON when None) is set only by an agent that watches a
    llama-server: it makes the agent a ``llama_server`` kind on our balancer.
    """

    desired_slots_total: int
    download_current: int
    download_filename: str | None = None
    download_indeterminate: bool
    download_total: int
    issues: frozenset[AgentIssue]
    model_path: str | None = None
    slots_processing: int
    slots_total: int
    state_application_status: StateApplicationStatus
    uses_chat_template_override: bool
    version: int
    # Our extension (`status_extensions.py`): the prompt state cache; None (left out of the JSON)
    # from Paddler's agents and toward Paddler's balancer.
    cache_states: int | None = None
    cache_used_bytes: int | None = None
    cache_limit_bytes: int | None = None
    multimodal_projection_path: str | None = None
    llama_server: LlamaServerStatus | None = None
