"""Messages of the agent WebSocket (``/api/v1/agent_socket/{agent_id}`` on the management service).

Balancer -> agent (``AgentBoundMessage``):
    ``{"Notification": {"Version": {"version"}}}`` -> ``VersionNotification``;
    ``{"Notification": {"SetState": {"desired_state"}}}`` -> ``SetStateNotification``;
    ``{"Notification": {"StopRespondingTo": id}}`` -> ``StopRespondingToNotification``;
    ``{"Request": {"id", "request": ...}}`` -> ``RequestEnvelope`` holding one of
    ``ContinueFromConversationHistoryParams`` (``{"ContinueFromConversationHistory": ...}``),
    ``ContinueFromRawPromptParams`` (``{"ContinueFromRawPrompt": ...}``),
    ``GenerateEmbeddingBatchParams`` (``{"GenerateEmbeddingBatch": ...}``),
    ``GetChatTemplateOverrideRequest`` (``"GetChatTemplateOverride"``),
    ``GetModelMetadataRequest`` (``"GetModelMetadata"``);
    ``{"Error": ...}`` -> ``ErrorEnvelope``.
Agent -> balancer (``BalancerBoundMessage``):
    ``{"Notification": {"RegisterAgent": {"name", "slot_aggregated_status_snapshot"}}}``
    -> ``RegisterAgentNotification``;
    ``{"Notification": {"UpdateAgentStatus": {"slot_aggregated_status_snapshot"}}}``
    -> ``UpdateAgentStatusNotification``;
    ``{"Notification": "DeregisterAgent"}`` -> ``DeregisterAgentNotification``;
    ``{"Response": {"generated_by", "request_id", "response": ...}}`` -> ``ResponseEnvelope`` holding a
    ``GeneratedTokenResult`` variant (``{"GeneratedToken": ...}``), an ``EmbeddingResult`` variant
    (``{"Embedding": ...}``), a ``ChatTemplateOverrideResponse`` (``{"ChatTemplateOverride": {"content"} | null}``)
    or a ``ModelMetadataResponse`` (``{"ModelMetadata": {"metadata": {...}} | null}``);
    ``{"Error": ...}`` -> ``ErrorEnvelope``.
"""

from __future__ import annotations

from typing import Union

import attrs

from paddler_trio.protocol.agent_desired_state import AgentDesiredState
from paddler_trio.protocol.chat_template import ChatTemplate
from paddler_trio.protocol.continue_from_conversation_history_params import ContinueFromConversationHistoryParams
from paddler_trio.protocol.continue_from_raw_prompt_params import ContinueFromRawPromptParams
from paddler_trio.protocol.embedding_result import EmbeddingResult
from paddler_trio.protocol.envelopes import ErrorEnvelope, RequestEnvelope, ResponseEnvelope
from paddler_trio.protocol.generate_embedding_batch_params import GenerateEmbeddingBatchParams
from paddler_trio.protocol.generated_token_result import GeneratedTokenResult
from paddler_trio.protocol.model_metadata import ModelMetadata
from paddler_trio.protocol.slot_aggregated_status_snapshot import SlotAggregatedStatusSnapshot
from paddler_trio.protocol.stop_responding_to_notification import StopRespondingToNotification


@attrs.frozen
class VersionNotification:
    """The balancer's Paddler version, sent first on every agent connection."""

    version: str


@attrs.frozen
class SetStateNotification:
    """What the agent must run; sent on registration and on every desired-state change."""

    desired_state: AgentDesiredState


@attrs.frozen
class GetChatTemplateOverrideRequest:
    """``"GetChatTemplateOverride"``: ask the agent for the override it applies."""


@attrs.frozen
class GetModelMetadataRequest:
    """``"GetModelMetadata"``: ask the agent for its model's GGUF metadata."""


@attrs.frozen
class RegisterAgentNotification:
    """The agent's first message after connecting."""

    name: str | None
    slot_aggregated_status_snapshot: SlotAggregatedStatusSnapshot


@attrs.frozen
class UpdateAgentStatusNotification:
    """Sent on every status change and every second."""

    slot_aggregated_status_snapshot: SlotAggregatedStatusSnapshot


@attrs.frozen
class DeregisterAgentNotification:
    """``{"Notification": "DeregisterAgent"}``: the agent is leaving."""


@attrs.frozen
class ChatTemplateOverrideResponse:
    """Answer to ``GetChatTemplateOverride``: ``{"ChatTemplateOverride": {"content"} | null}``."""

    chat_template: ChatTemplate | None


@attrs.frozen
class ModelMetadataResponse:
    """Answer to ``GetModelMetadata``: ``{"ModelMetadata": {"metadata": {...}} | null}``."""

    model_metadata: ModelMetadata | None


AgentRequest = Union[
    ContinueFromConversationHistoryParams,
    ContinueFromRawPromptParams,
    GenerateEmbeddingBatchParams,
    GetChatTemplateOverrideRequest,
    GetModelMetadataRequest,
]

AgentResponse = Union[GeneratedTokenResult, EmbeddingResult, ChatTemplateOverrideResponse, ModelMetadataResponse]

AgentBoundMessage = Union[
    RequestEnvelope[AgentRequest],
    VersionNotification,
    SetStateNotification,
    StopRespondingToNotification,
    ErrorEnvelope,
]

BalancerBoundMessage = Union[
    ResponseEnvelope[AgentResponse],
    RegisterAgentNotification,
    UpdateAgentStatusNotification,
    DeregisterAgentNotification,
    ErrorEnvelope,
]
