"""Messages of the inference WebSocket (``/api/v1/inference_socket``) and the NDJSON routes.

Client -> balancer (``InferenceServerBoundMessage``):
    ``{"Request": {"id", "request": {"ContinueFromConversationHistory": ...}}}`` -> ``RequestEnvelope`` holding
    a ``ContinueFromConversationHistoryParams``; likewise ``{"ContinueFromRawPrompt": ...}`` ->
    ``ContinueFromRawPromptParams``; ``{"Notification": {"StopRespondingTo": id}}`` ->
    ``StopRespondingToNotification``; ``{"Error": ...}`` -> ``ErrorEnvelope``.
Balancer -> client (``InferenceClientBoundMessage``; also every NDJSON line of the POST routes):
    ``{"Response": {"generated_by", "request_id", "response": {"GeneratedToken": ...}}}`` -> ``ResponseEnvelope``
    holding a ``GeneratedTokenResult`` variant; ``{"Embedding": ...}`` -> an ``EmbeddingResult`` variant;
    ``{"Error": ...}`` -> ``ErrorEnvelope``; ``{"Notification": "TokenGenerationDisabled"}`` ->
    ``TokenGenerationDisabledNotification``; ``{"Notification": "TokenGenerationEnabled"}`` ->
    ``TokenGenerationEnabledNotification``.
"""

from __future__ import annotations

from typing import Union

import attrs

from paddler_trio.protocol.continue_from_conversation_history_params import ContinueFromConversationHistoryParams
from paddler_trio.protocol.continue_from_raw_prompt_params import ContinueFromRawPromptParams
from paddler_trio.protocol.embedding_result import EmbeddingResult
from paddler_trio.protocol.envelopes import ErrorEnvelope, RequestEnvelope, ResponseEnvelope
from paddler_trio.protocol.generated_token_result import GeneratedTokenResult
from paddler_trio.protocol.stop_responding_to_notification import StopRespondingToNotification


@attrs.frozen
class TokenGenerationDisabledNotification:
    """``{"Notification": "TokenGenerationDisabled"}``: the cluster switched to embeddings mode."""


@attrs.frozen
class TokenGenerationEnabledNotification:
    """``{"Notification": "TokenGenerationEnabled"}``: the cluster left embeddings mode."""


InferenceRequest = Union[ContinueFromConversationHistoryParams, ContinueFromRawPromptParams]

InferenceResponse = Union[GeneratedTokenResult, EmbeddingResult]

InferenceServerBoundMessage = Union[
    RequestEnvelope[InferenceRequest],
    StopRespondingToNotification,
    ErrorEnvelope,
]

InferenceClientBoundMessage = Union[
    ResponseEnvelope[InferenceResponse],
    ErrorEnvelope,
    TokenGenerationDisabledNotification,
    TokenGenerationEnabledNotification,
]
