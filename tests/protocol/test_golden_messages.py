"""Every message of the spec's Appendix A (and the inline examples of sections 2 and 5), both directions."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest

from paddler_trio.protocol import (
    AgentBoundMessage,
    AgentDesiredState,
    BalancerBoundMessage,
    ContentToken,
    ContinueFromConversationHistoryParams,
    ContinueFromRawPromptParams,
    ConversationMessage,
    EmbeddingDone,
    ErrorDetails,
    ErrorEnvelope,
    GenerationDone,
    GetModelMetadataRequest,
    HuggingFaceModel,
    InferenceClientBoundMessage,
    InferenceParameters,
    InferenceServerBoundMessage,
    LlamaServerIsLoadingModel,
    LlamaServerStatus,
    ModelMetadata,
    ModelMetadataResponse,
    NoModel,
    RegisterAgentNotification,
    RequestEnvelope,
    ResponseEnvelope,
    SetStateNotification,
    SlotAggregatedStatusSnapshot,
    StateApplicationStatus,
    StopRespondingToNotification,
    TokenGenerationDisabled,
    TokenGenerationDisabledNotification,
    TokenGenerationEnabledNotification,
    TokenUsage,
    UpdateAgentStatusNotification,
    VersionNotification,
    from_json,
    to_json,
)

FRESH_SNAPSHOT = SlotAggregatedStatusSnapshot(
    desired_slots_total=4,
    download_current=0,
    download_filename=None,
    download_indeterminate=True,
    download_total=0,
    issues=frozenset(),
    model_path=None,
    slots_processing=0,
    slots_total=0,
    state_application_status=StateApplicationStatus.FRESH,
    uses_chat_template_override=False,
    version=0,
)

INFERENCE_PARAMETERS_JSON = (
    '{"n_batch":2048,"context_size":8192,"embedding_batch_size":256,"enable_embeddings":false,'
    '"image_resize_to_fit":1024,"k_cache_dtype":"Q8_0","v_cache_dtype":"Q8_0","min_p":0.05,"n_gpu_layers":0,'
    '"penalty_frequency":0.0,"penalty_last_n":-1,"penalty_presence":0.8,"penalty_repeat":1.1,'
    '"pooling_type":"Last","temperature":0.8,"top_k":80,"top_p":0.8}'
)

USAGE_16 = TokenUsage(prompt_tokens=2, content_tokens=16)

# (Paddler's compact JSON, our value, the union it is read as): Paddler writes exactly these bytes.
BYTE_EXACT: list[tuple[str, Any, Any]] = [
    (
        '{"Notification":{"Version":{"version":"4.1.0"}}}',
        VersionNotification("4.1.0"),
        AgentBoundMessage,
    ),
    (
        '{"Notification":{"RegisterAgent":{"name":"gpu-1","slot_aggregated_status_snapshot":{'
        '"desired_slots_total":4,"download_current":0,"download_filename":null,'
        '"download_indeterminate":true,"download_total":0,"issues":[],"model_path":null,'
        '"slots_processing":0,"slots_total":0,"state_application_status":"Fresh",'
        '"uses_chat_template_override":false,"version":0}}}}',
        RegisterAgentNotification(name="gpu-1", slot_aggregated_status_snapshot=FRESH_SNAPSHOT),
        BalancerBoundMessage,
    ),
    (
        '{"Notification":{"SetState":{"desired_state":{"chat_template_override":null,'
        f'"inference_parameters":{INFERENCE_PARAMETERS_JSON},"model":{{"HuggingFace":{{"repo_id":"Qwen/Qwen3-0.6B-GGUF",'
        '"filename":"Qwen3-0.6B-Q8_0.gguf","revision":"main"}},"multimodal_projection":"None"}}}}',
        SetStateNotification(
            AgentDesiredState(
                inference_parameters=InferenceParameters(),
                model=HuggingFaceModel(
                    repo_id="Qwen/Qwen3-0.6B-GGUF", filename="Qwen3-0.6B-Q8_0.gguf", revision="main"
                ),
                multimodal_projection=NoModel(),
            )
        ),
        AgentBoundMessage,
    ),
    (
        '{"Notification":{"UpdateAgentStatus":{"slot_aggregated_status_snapshot":{'
        '"desired_slots_total":4,"download_current":0,"download_filename":null,'
        '"download_indeterminate":false,"download_total":0,"issues":[],'
        '"model_path":"/models/Qwen3-0.6B-Q8_0.gguf","slots_processing":0,"slots_total":4,'
        '"state_application_status":"Applied","uses_chat_template_override":false,"version":7}}}}',
        UpdateAgentStatusNotification(
            SlotAggregatedStatusSnapshot(
                desired_slots_total=4,
                download_current=0,
                download_indeterminate=False,
                download_total=0,
                issues=frozenset(),
                model_path="/models/Qwen3-0.6B-Q8_0.gguf",
                slots_processing=0,
                slots_total=4,
                state_application_status=StateApplicationStatus.APPLIED,
                uses_chat_template_override=False,
                version=7,
            )
        ),
        BalancerBoundMessage,
    ),
    (
        '{"Request":{"id":"r-1","request":{"ContinueFromRawPrompt":{"grammar":null,"max_tokens":16,"raw_prompt":"Hello"}}}}',
        RequestEnvelope("r-1", ContinueFromRawPromptParams(max_tokens=16, raw_prompt="Hello")),
        AgentBoundMessage,
    ),
    (
        '{"Response":{"generated_by":null,"request_id":"r-1","response":{"GeneratedToken":{"ContentToken":" world"}}}}',
        ResponseEnvelope(None, "r-1", ContentToken(" world")),
        BalancerBoundMessage,
    ),
    (
        '{"Response":{"generated_by":null,"request_id":"r-1","response":{"GeneratedToken":{"Done":{"usage":{'
        '"prompt_tokens":2,"cached_prompt_tokens":0,"input_image_tokens":0,"input_audio_tokens":0,'
        '"content_tokens":16,"reasoning_tokens":0,"tool_call_tokens":0,"undeterminable_tokens":0}}}}}}',
        ResponseEnvelope(None, "r-1", GenerationDone(USAGE_16)),
        BalancerBoundMessage,
    ),
    (
        '{"Response":{"generated_by":"gpu-1","request_id":"c-9","response":{"GeneratedToken":{"ContentToken":"Once"}}}}',
        ResponseEnvelope("gpu-1", "c-9", ContentToken("Once")),
        InferenceClientBoundMessage,
    ),
    (
        '{"Notification":{"StopRespondingTo":"c-9"}}',
        StopRespondingToNotification("c-9"),
        InferenceServerBoundMessage,
    ),
    (
        '{"Notification":{"StopRespondingTo":"c-9"}}',
        StopRespondingToNotification("c-9"),
        AgentBoundMessage,
    ),
    (
        '{"Error":{"request_id":"Kq3","error":{"code":503,"description":"Buffered requests overflow"}}}',
        ErrorEnvelope("Kq3", ErrorDetails(503, "Buffered requests overflow")),
        InferenceClientBoundMessage,
    ),
    (
        '{"Error":{"request_id":"Kq4","error":{"code":504,"description":"Waiting for available slot timed out"}}}',
        ErrorEnvelope("Kq4", ErrorDetails(504, "Waiting for available slot timed out")),
        InferenceClientBoundMessage,
    ),
    (
        '{"Request":{"id":"m-1","request":"GetModelMetadata"}}',
        RequestEnvelope("m-1", GetModelMetadataRequest()),
        AgentBoundMessage,
    ),
    (
        '{"Response":{"generated_by":"agent-1","request_id":"V1StGXR8","response":{"GeneratedToken":{"ContentToken":"Hello"}}}}',
        ResponseEnvelope("agent-1", "V1StGXR8", ContentToken("Hello")),
        InferenceClientBoundMessage,
    ),
    (
        '{"Response":{"generated_by":null,"request_id":"ws-1","response":{"GeneratedToken":{"TokenGenerationDisabled":'
        '"Token generation is disabled while the cluster is configured for embeddings"}}}}',
        ResponseEnvelope(
            None,
            "ws-1",
            TokenGenerationDisabled("Token generation is disabled while the cluster is configured for embeddings"),
        ),
        InferenceClientBoundMessage,
    ),
    ('{"Notification":"TokenGenerationDisabled"}', TokenGenerationDisabledNotification(), InferenceClientBoundMessage),
    ('{"Notification":"TokenGenerationEnabled"}', TokenGenerationEnabledNotification(), InferenceClientBoundMessage),
    (
        '{"Response":{"generated_by":null,"request_id":"final","response":{"Embedding":"Done"}}}',
        ResponseEnvelope(None, "final", EmbeddingDone()),
        InferenceClientBoundMessage,
    ),
]


@pytest.mark.parametrize(("text", "value", "union"), BYTE_EXACT, ids=[text[:60] for text, _, _ in BYTE_EXACT])
def test_paddler_bytes_round_trip(text: str, value: Any, union: Any) -> None:
    assert to_json(value) == text
    assert from_json(text, union) == value
    assert from_json(text.encode("utf-8"), union) == value


def test_a2_client_request_omitting_optional_fields() -> None:
    text = (
        '{"Request":{"id":"c-9","request":{"ContinueFromConversationHistory":{"add_generation_prompt":true,'
        '"conversation_history":[{"role":"user","content":"Write a long story"}],'
        '"enable_thinking":false,"max_tokens":500}}}}'
    )
    message = from_json(text, InferenceServerBoundMessage)
    assert message == RequestEnvelope(
        "c-9",
        ContinueFromConversationHistoryParams(
            add_generation_prompt=True,
            conversation_history=(ConversationMessage("user", "Write a long story"),),
            enable_thinking=False,
            max_tokens=500,
        ),
    )
    # Written back with the defaults Paddler fills in (and none of our optional sampling overrides).
    expected = json.loads(text)
    expected["Request"]["request"]["ContinueFromConversationHistory"].update(
        grammar=None, parse_tool_calls=False, tools=[]
    )
    assert json.loads(to_json(message)) == expected


def test_a4_model_metadata_response_sorts_keys_like_a_btreemap() -> None:
    text = (
        '{"Response":{"generated_by":null,"request_id":"m-1","response":{"ModelMetadata":{"metadata":'
        '{"general.architecture":"qwen3","...":"..."}}}}}'
    )
    message = from_json(text, BalancerBoundMessage)
    metadata = ModelMetadata({"general.architecture": "qwen3", "...": "..."})
    assert message == ResponseEnvelope(None, "m-1", ModelMetadataResponse(metadata))
    assert json.loads(to_json(message)) == json.loads(text)
    assert to_json(metadata) == '{"metadata":{"...":"...","general.architecture":"qwen3"}}'


def test_non_ascii_is_written_raw_like_serde_json() -> None:
    envelope = ResponseEnvelope(None, "r", ContentToken('zażółć "gęślą"\n\t\x01 🦀'))
    assert to_json(envelope) == (
        '{"Response":{"generated_by":null,"request_id":"r","response":{"GeneratedToken":'
        '{"ContentToken":"zażółć \\"gęślą\\"\\n\\t\\u0001 🦀"}}}}'
    )


def test_an_absent_generated_by_is_null_as_in_serde() -> None:
    text = '{"Response":{"request_id":"r","response":{"Embedding":"Done"}}}'
    assert from_json(text, InferenceClientBoundMessage) == ResponseEnvelope(None, "r", EmbeddingDone())


def test_a_watched_llama_server_is_ours_and_written_only_when_set() -> None:
    watching = attrs.evolve(
        FRESH_SNAPSHOT,
        slots_total=2,
        issues=frozenset({LlamaServerIsLoadingModel(description="loading", llamacpp_addr="[::1]:8080")}),
        llama_server=LlamaServerStatus(external_llamacpp_addr="[::1]:8080", model_name="qwen"),
    )
    text = to_json(UpdateAgentStatusNotification(watching))
    assert text.endswith(
        '"issues":[{"LlamaServerIsLoadingModel":{"description":"loading","llamacpp_addr":"[::1]:8080"}}],'
        '"model_path":null,"slots_processing":0,"slots_total":2,"state_application_status":"Fresh",'
        '"uses_chat_template_override":false,"version":0,'
        '"llama_server":{"external_llamacpp_addr":"[::1]:8080","model_name":"qwen"}}}}}'
    )
    assert from_json(text, BalancerBoundMessage) == UpdateAgentStatusNotification(watching)
    assert "llama_server" not in to_json(FRESH_SNAPSHOT)
