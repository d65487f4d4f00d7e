"""Every variant of every union: its exact JSON, read back through the union, and terminality."""

from __future__ import annotations

from typing import Any, get_args

import pytest

from paddler_trio import protocol
from paddler_trio.protocol import (
    AgentBoundMessage,
    AgentControllerPoolSnapshot,
    AgentControllerSnapshot,
    AgentIssue,
    BalancerBoundMessage,
    CacheCannotAcquireLock,
    CacheDirectoryIsNotWritable,
    CacheStorageIsFull,
    ChatTemplate,
    ChatTemplateDoesNotCompile,
    ChatTemplateError,
    ChatTemplateOverrideResponse,
    ContentPart,
    ContentToken,
    ContinueFromConversationHistoryParams,
    ContinueFromRawPromptParams,
    DeregisterAgentNotification,
    DetokenizationFailed,
    DocumentExceedsBatchSize,
    DownloadInterrupted,
    DownloadServerDeniedAccess,
    DownloadServerErrored,
    DownloadServerIsUnreachable,
    DownloadServerRejectedRequest,
    DownloadUrlIsMalformed,
    Embedding,
    EmbeddingDone,
    EmbeddingError,
    EmbeddingInputDocument,
    EmbeddingProduced,
    EmbeddingRejectedDueToActiveTokenGeneration,
    EmbeddingResult,
    EmbeddingsDisabled,
    GbnfGrammar,
    GenerateEmbeddingBatchParams,
    GeneratedTokenResult,
    GenerationDone,
    GetChatTemplateOverrideRequest,
    GrammarConstraint,
    GrammarIncompatibleWithThinking,
    GrammarInitializationFailed,
    GrammarRejectedModelOutput,
    GrammarSyntaxError,
    HuggingFaceCannotAcquireLock,
    HuggingFaceModel,
    HuggingFaceModelDoesNotExist,
    HuggingFacePermissions,
    ImageDecodingFailed,
    ImageExceedsBatchSize,
    ImageUrl,
    ImageUrlPart,
    InvalidJsonArguments,
    JsonSchemaGrammar,
    L2Normalization,
    LlamaServerAgentReportedError,
    LlamaServerAnsweredUnexpectedly,
    LlamaServerIsLoadingModel,
    LlamaServerIsUnreachable,
    LlamaServerRefusedApiKey,
    LlamaServerSlotsEndpointIsDisabled,
    LocalToAgentModel,
    ModelCacheIsCorrupted,
    ModelCannotBeLoaded,
    ModelDoesNotExistAtUrl,
    ModelFileDoesNotExist,
    ModelMetadataResponse,
    ModelSource,
    MultimodalNotSupported,
    MultimodalProjectionCannotBeLoaded,
    NoEmbeddingsProduced,
    NoModel,
    NoNormalization,
    NormalizationMethod,
    ParsedToolCall,
    PoolingType,
    ReasoningToken,
    RequestEnvelope,
    ResponseEnvelope,
    RmsNormNormalization,
    SamplerError,
    SlotCannotStart,
    StateApplicationStatus,
    TextPart,
    TokenGenerationDisabled,
    TokenUsage,
    ToolCallArguments,
    ToolCallParsed,
    ToolCallParseFailed,
    ToolCallToken,
    ToolCallValidationFailed,
    ToolSchemaInvalid,
    UnableToFindChatTemplate,
    UndeterminableToken,
    UnrecognizedToolCallFormat,
    UrlModel,
    ValidJsonArguments,
    from_json,
    is_terminal,
    to_json,
)
from paddler_trio.protocol import embedding_result, generated_token_result

USAGE = TokenUsage(1, 2, 3, 4, 5, 6, 7, 8)
USAGE_JSON = (
    '{"prompt_tokens":1,"cached_prompt_tokens":2,"input_image_tokens":3,"input_audio_tokens":4,'
    '"content_tokens":5,"reasoning_tokens":6,"tool_call_tokens":7,"undeterminable_tokens":8}'
)

GENERATED_TOKEN_RESULTS: list[tuple[Any, str]] = [
    (ContentToken("Hi"), '{"ContentToken":"Hi"}'),
    (ReasoningToken("hmm"), '{"ReasoningToken":"hmm"}'),
    (ToolCallToken("{"), '{"ToolCallToken":"{"}'),
    (UndeterminableToken("?"), '{"UndeterminableToken":"?"}'),
    (
        ToolCallParsed(
            (
                ParsedToolCall("call_1", "get_weather", ValidJsonArguments({"city": "Oslo", "days": [1, 2]})),
                ParsedToolCall("call_2", "broken", InvalidJsonArguments("{city:")),
            )
        ),
        '{"ToolCallParsed":[{"id":"call_1","name":"get_weather","arguments":{"ValidJson":{"city":"Oslo","days":[1,2]}}},'
        '{"id":"call_2","name":"broken","arguments":{"InvalidJson":"{city:"}}]}',
    ),
    (ToolCallParsed(()), '{"ToolCallParsed":[]}'),
    (ToolCallParseFailed("no closing tag"), '{"ToolCallParseFailed":"no closing tag"}'),
    (ToolCallValidationFailed(("a", "b")), '{"ToolCallValidationFailed":["a","b"]}'),
    (
        UnrecognizedToolCallFormat(text="<call>", ffi_error_message="unknown"),
        '{"UnrecognizedToolCallFormat":{"text":"<call>","ffi_error_message":"unknown"}}',
    ),
    (GenerationDone(USAGE), '{"Done":{"usage":' + USAGE_JSON + "}}"),
    (ChatTemplateError("m"), '{"ChatTemplateError":"m"}'),
    (DetokenizationFailed("m"), '{"DetokenizationFailed":"m"}'),
    (GrammarIncompatibleWithThinking("m"), '{"GrammarIncompatibleWithThinking":"m"}'),
    (GrammarInitializationFailed("m"), '{"GrammarInitializationFailed":"m"}'),
    (GrammarRejectedModelOutput("m"), '{"GrammarRejectedModelOutput":"m"}'),
    (GrammarSyntaxError("m"), '{"GrammarSyntaxError":"m"}'),
    (ImageDecodingFailed("m"), '{"ImageDecodingFailed":"m"}'),
    (
        ImageExceedsBatchSize(image_tokens=1200, n_batch=512),
        '{"ImageExceedsBatchSize":{"image_tokens":1200,"n_batch":512}}',
    ),
    (MultimodalNotSupported("m"), '{"MultimodalNotSupported":"m"}'),
    (SamplerError("m"), '{"SamplerError":"m"}'),
    (TokenGenerationDisabled("m"), '{"TokenGenerationDisabled":"m"}'),
    (ToolSchemaInvalid("m"), '{"ToolSchemaInvalid":"m"}'),
]

NON_TERMINAL_TOKEN_RESULTS = (
    ContentToken,
    ReasoningToken,
    ToolCallToken,
    UndeterminableToken,
    ToolCallParsed,
    ToolCallParseFailed,
    ToolCallValidationFailed,
    UnrecognizedToolCallFormat,
)

EMBEDDING = Embedding(
    embedding=(0.25, -1.0, 3.0),
    normalization_method=RmsNormNormalization(1e-6),
    pooling_type=PoolingType.MEAN,
    source_document_id="doc-1",
)

EMBEDDING_RESULTS: list[tuple[Any, str]] = [
    (
        EmbeddingProduced(EMBEDDING),
        '{"Embedding":{"embedding":[0.25,-1.0,3.0],"normalization_method":{"RmsNorm":{"epsilon":1e-06}},'
        '"pooling_type":"Mean","source_document_id":"doc-1"}}',
    ),
    (
        DocumentExceedsBatchSize(document_tokens=4096, n_batch=2048, source_document_id="huge"),
        '{"DocumentExceedsBatchSize":{"document_tokens":4096,"n_batch":2048,"source_document_id":"huge"}}',
    ),
    (EmbeddingDone(), '"Done"'),
    (EmbeddingsDisabled(), '"EmbeddingsDisabled"'),
    (EmbeddingError("boom"), '{"Error":"boom"}'),
    (EmbeddingRejectedDueToActiveTokenGeneration(), '"EmbeddingRejectedDueToActiveTokenGeneration"'),
    (NoEmbeddingsProduced(), '"NoEmbeddingsProduced"'),
]

NORMALIZATION_METHODS: list[tuple[Any, str]] = [
    (NoNormalization(), '"None"'),
    (L2Normalization(), '"L2"'),
    (RmsNormNormalization(0.5), '{"RmsNorm":{"epsilon":0.5}}'),
]

MODEL_SOURCES: list[tuple[Any, str]] = [
    (NoModel(), '"None"'),
    (
        HuggingFaceModel(repo_id="unsloth/Qwen3-0.6B-GGUF", filename="Qwen3-0.6B-Q8_0.gguf", revision="main"),
        '{"HuggingFace":{"repo_id":"unsloth/Qwen3-0.6B-GGUF","filename":"Qwen3-0.6B-Q8_0.gguf","revision":"main"}}',
    ),
    (UrlModel("https://example.com/m.gguf"), '{"Url":{"url":"https://example.com/m.gguf"}}'),
    (LocalToAgentModel("/models/m.gguf"), '{"LocalToAgent":"/models/m.gguf"}'),
]

MODEL_PATH_ISSUES = (
    CacheCannotAcquireLock,
    CacheDirectoryIsNotWritable,
    CacheStorageIsFull,
    DownloadInterrupted,
    DownloadServerDeniedAccess,
    DownloadServerErrored,
    DownloadServerIsUnreachable,
    DownloadServerRejectedRequest,
    DownloadUrlIsMalformed,
    HuggingFaceModelDoesNotExist,
    HuggingFacePermissions,
    ModelCacheIsCorrupted,
    ModelCannotBeLoaded,
    ModelDoesNotExistAtUrl,
    ModelFileDoesNotExist,
    MultimodalProjectionCannotBeLoaded,
    UnableToFindChatTemplate,
)

AGENT_ISSUES: list[tuple[Any, str]] = [
    *((issue("/m.gguf"), f'{{"{issue.__name__}":{{"model_path":"/m.gguf"}}}}') for issue in MODEL_PATH_ISSUES),
    (
        ChatTemplateDoesNotCompile(error="bad tag", model_path="/m.gguf", template_content="{% x %}"),
        '{"ChatTemplateDoesNotCompile":{"error":"bad tag","model_path":{"model_path":"/m.gguf"},'
        '"template_content":"{% x %}"}}',
    ),
    (
        HuggingFaceCannotAcquireLock(lock_path="/hf/.lock", model_path="org/repo/main/m.gguf"),
        '{"HuggingFaceCannotAcquireLock":{"lock_path":"/hf/.lock","model_path":{"model_path":"org/repo/main/m.gguf"}}}',
    ),
    (SlotCannotStart(error="no memory", slot_index=3), '{"SlotCannotStart":{"error":"no memory","slot_index":3}}'),
    # Ours: a watched llama-server's problems.
    *(
        (issue(description="why", llamacpp_addr="[::1]:8080"), f'{{"{issue.__name__}":{{"description":"why","llamacpp_addr":"[::1]:8080"}}}}')
        for issue in (
            LlamaServerIsUnreachable,
            LlamaServerRefusedApiKey,
            LlamaServerSlotsEndpointIsDisabled,
            LlamaServerIsLoadingModel,
            LlamaServerAnsweredUnexpectedly,
            LlamaServerAgentReportedError,
        )
    ),
]

CONTENT_PARTS: list[tuple[Any, str]] = [
    (TextPart("hi"), '{"type":"text","text":"hi"}'),
    (
        ImageUrlPart(ImageUrl("data:image/png;base64,AAAA")),
        '{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}',
    ),
]

GRAMMARS: list[tuple[Any, str]] = [
    (
        GbnfGrammar(grammar='root ::= "yes"', root="root"),
        '{"type":"gbnf","grammar":"root ::= \\"yes\\"","root":"root"}',
    ),
    (JsonSchemaGrammar('{"type":"object"}'), '{"type":"json_schema","schema":"{\\"type\\":\\"object\\"}"}'),
]

TOOL_CALL_ARGUMENTS: list[tuple[Any, str]] = [
    (ValidJsonArguments(None), '{"ValidJson":null}'),
    (ValidJsonArguments([1, "a", {"b": True}]), '{"ValidJson":[1,"a",{"b":true}]}'),
    (InvalidJsonArguments("{"), '{"InvalidJson":"{"}'),
]

AGENT_RESPONSES: list[tuple[Any, str]] = [
    (ChatTemplateOverrideResponse(ChatTemplate("{{ x }}")), '{"ChatTemplateOverride":{"content":"{{ x }}"}}'),
    (ChatTemplateOverrideResponse(None), '{"ChatTemplateOverride":null}'),
    (ModelMetadataResponse(None), '{"ModelMetadata":null}'),
]

UNIONS: list[tuple[Any, list[tuple[Any, str]]]] = [
    (GeneratedTokenResult, GENERATED_TOKEN_RESULTS),
    (EmbeddingResult, EMBEDDING_RESULTS),
    (NormalizationMethod, NORMALIZATION_METHODS),
    (ModelSource, MODEL_SOURCES),
    (AgentIssue, AGENT_ISSUES),
    (ContentPart, CONTENT_PARTS),
    (GrammarConstraint, GRAMMARS),
    (ToolCallArguments, TOOL_CALL_ARGUMENTS),
]

CASES = [(union, value, text) for union, table in UNIONS for value, text in table]


@pytest.mark.parametrize(("union", "value", "text"), CASES, ids=[text[:50] for _, _, text in CASES])
def test_variant_json_both_ways(union: Any, value: Any, text: str) -> None:
    assert to_json(value) == text
    assert from_json(text, union) == value
    assert from_json(text, type(value)) == value


@pytest.mark.parametrize(("union", "table"), UNIONS, ids=[str(table[0][0].__class__.__name__) for _, table in UNIONS])
def test_every_variant_of_the_union_is_covered(union: Any, table: list[tuple[Any, str]]) -> None:
    assert {type(value) for value, _ in table} == set(get_args(union))


@pytest.mark.parametrize(
    ("value", "text"), GENERATED_TOKEN_RESULTS, ids=[text[:40] for _, text in GENERATED_TOKEN_RESULTS]
)
def test_generated_token_results_inside_an_agent_response(value: Any, text: str) -> None:
    envelope = ResponseEnvelope(None, "r", value)
    line = '{"Response":{"generated_by":null,"request_id":"r","response":{"GeneratedToken":' + text + "}}}"
    assert to_json(envelope) == line
    assert from_json(line, BalancerBoundMessage) == envelope
    assert (
        is_terminal(value)
        == generated_token_result.is_terminal(value)
        == (not isinstance(value, NON_TERMINAL_TOKEN_RESULTS))
    )


@pytest.mark.parametrize(("value", "text"), EMBEDDING_RESULTS, ids=[text[:40] for _, text in EMBEDDING_RESULTS])
def test_embedding_results_inside_an_agent_response(value: Any, text: str) -> None:
    envelope = ResponseEnvelope(None, "r", value)
    line = '{"Response":{"generated_by":null,"request_id":"r","response":{"Embedding":' + text + "}}}"
    assert to_json(envelope) == line
    assert from_json(line, BalancerBoundMessage) == envelope
    assert (
        is_terminal(value)
        == embedding_result.is_terminal(value)
        == (not isinstance(value, EmbeddingProduced | DocumentExceedsBatchSize))
    )


@pytest.mark.parametrize(("value", "text"), AGENT_RESPONSES, ids=[text for _, text in AGENT_RESPONSES])
def test_chat_template_and_metadata_responses(value: Any, text: str) -> None:
    line = '{"Response":{"generated_by":null,"request_id":"q","response":' + text + "}}"
    assert to_json(ResponseEnvelope(None, "q", value)) == line
    assert from_json(line, BalancerBoundMessage) == ResponseEnvelope(None, "q", value)


def test_agent_requests() -> None:
    embedding_batch = GenerateEmbeddingBatchParams(
        input_batch=(EmbeddingInputDocument(id="d1", content="hello"),), normalization_method=L2Normalization()
    )
    cases = [
        (
            RequestEnvelope("e", embedding_batch),
            '{"Request":{"id":"e","request":{"GenerateEmbeddingBatch":{"input_batch":[{"id":"d1","content":"hello"}],'
            '"normalization_method":"L2"}}}}',
        ),
        (
            RequestEnvelope("t", GetChatTemplateOverrideRequest()),
            '{"Request":{"id":"t","request":"GetChatTemplateOverride"}}',
        ),
        (DeregisterAgentNotification(), '{"Notification":"DeregisterAgent"}'),
    ]
    for value, text in cases:
        assert to_json(value) == text
        assert (
            from_json(text, AgentBoundMessage if isinstance(value, RequestEnvelope) else BalancerBoundMessage) == value
        )


def test_enums_are_their_wire_strings() -> None:
    assert [member.value for member in PoolingType] == ["Unspecified", "None", "Mean", "Cls", "Last", "Rank"]
    assert [member.value for member in protocol.CacheDtype] == [
        "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "IQ4_NL", "Q5_0", "Q5_1",
    ]  # fmt: skip
    assert from_json('"None"', PoolingType) is PoolingType.NONE
    assert to_json(StateApplicationStatus.ATTEMPTED_AND_RETRYING) == '"AttemptedAndRetrying"'


def test_pool_snapshot_issues_are_a_sorted_set() -> None:
    issues = frozenset(
        {
            UnableToFindChatTemplate("/b"),
            ModelCannotBeLoaded("/b"),
            ModelCannotBeLoaded("/a"),
            SlotCannotStart(error="x", slot_index=1),
            CacheStorageIsFull("/z"),
        }
    )
    snapshot = AgentControllerPoolSnapshot(
        (
            AgentControllerSnapshot(
                desired_slots_total=2,
                download_current=5,
                download_filename="m.gguf",
                download_indeterminate=False,
                download_total=10,
                id="Xy12",
                issues=issues,
                model_path=None,
                name=None,
                slots_processing=1,
                slots_total=2,
                state_application_status=StateApplicationStatus.STUCK,
                uses_chat_template_override=True,
            ),
        )
    )
    text = to_json(snapshot)
    assert (
        '"issues":[{"CacheStorageIsFull":{"model_path":"/z"}},{"ModelCannotBeLoaded":{"model_path":"/a"}},'
        '{"ModelCannotBeLoaded":{"model_path":"/b"}},{"SlotCannotStart":{"error":"x","slot_index":1}},'
        '{"UnableToFindChatTemplate":{"model_path":"/b"}}]'
    ) in text
    assert from_json(text, AgentControllerPoolSnapshot) == snapshot
    assert len({*issues, ModelCannotBeLoaded("/a")}) == len(issues)


def test_terminal_results_of_both_kinds() -> None:
    assert is_terminal(GenerationDone(TokenUsage()))
    assert is_terminal(EmbeddingDone())
    assert not is_terminal(ContentToken("x"))
    assert not is_terminal(EmbeddingProduced(EMBEDDING))


def test_request_payloads_carry_their_tags() -> None:
    raw = ContinueFromRawPromptParams(max_tokens=3, raw_prompt="x")
    assert to_json(raw) == '{"grammar":null,"max_tokens":3,"raw_prompt":"x"}'
    conversation = ContinueFromConversationHistoryParams(
        add_generation_prompt=True, conversation_history=(), enable_thinking=True, max_tokens=1
    )
    assert to_json(RequestEnvelope("c", conversation)).startswith(
        '{"Request":{"id":"c","request":{"ContinueFromConversationHistory":{"add_generation_prompt":true,'
    )
