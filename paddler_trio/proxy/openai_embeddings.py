"""`POST /v1/embeddings` (Paddler has none): the inputs are split across the agents exactly as
the native embedding batch is (spec 2.6), each chunk dispatched through the buffer, and the
L2-normalised vectors come back in input order, as floats or as base64 (little-endian
float32, which the official client asks for by default and decodes).

Only a cluster in embeddings mode (`enable_embeddings` in the desired state) can answer: any
other is a 501 that says so. The agents report no token counts for embeddings, so `usage`
counts are 0.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

from paddler_trio.proxy.agent_pool import AgentPool
from paddler_trio.proxy.embedding_batch_chunks import chunk_evenly_with_cap
from paddler_trio.proxy.inference_routes import ApplicableStateSource
from paddler_trio.proxy.openai_dispatch import OpenAIDispatcher
from paddler_trio.proxy.openai_errors import OpenAIError, invalid_value, missing_parameter, unsupported
from paddler_trio.proxy.openai_request_fields import RequestObject, invalid_type
from paddler_trio.protocol import (
    AgentRequest,
    DocumentExceedsBatchSize,
    EmbeddingDone,
    EmbeddingError,
    EmbeddingInputDocument,
    EmbeddingProduced,
    EmbeddingRejectedDueToActiveTokenGeneration,
    EmbeddingsDisabled,
    GenerateEmbeddingBatchParams,
    L2Normalization,
)

EMBEDDINGS_DISABLED_DESCRIPTION = (
    "Embeddings are disabled: the cluster is not configured for embeddings "
    "(set enable_embeddings in the balancer's desired state)"
)


def _inputs(body: RequestObject) -> list[str]:
    value = body.data.get("input")
    if value is None:
        raise missing_parameter("input")
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list):
        raise invalid_type("input", "a string or an array of strings", value)
    if not texts:
        raise invalid_value(
            "input", "Invalid 'input': empty array. Expected an array with minimum length 1.", code="empty_array"
        )
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise invalid_type(f"input[{index}]", "a string (token arrays are not supported)", text)
        if not text:
            raise invalid_value(f"input[{index}]", "'input' cannot contain an empty string.")
    return texts


def _encoded(vector: tuple[float, ...], encoding_format: str) -> list[float] | str:
    if encoding_format == "float":
        return list(vector)
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


async def embeddings(
    dispatcher: OpenAIDispatcher, cluster: ApplicableStateSource, pool: AgentPool, body: RequestObject
) -> dict[str, Any]:
    model = body.string("model", required=True)
    assert model is not None
    texts = _inputs(body)
    encoding_format = body.choice("encoding_format", ("float", "base64")) or "float"
    if body.present("dimensions"):
        raise unsupported("dimensions", "'dimensions' is not supported: vectors have the model's own size.")
    state = cluster.applicable_state
    if state is None:
        raise OpenAIError(503, "Balancer applicable state is not yet set")
    if not state.inference_parameters.enable_embeddings:
        raise OpenAIError(501, EMBEDDINGS_DISABLED_DESCRIPTION, code="embeddings_disabled")
    agent_count = len(pool.engine_agents)
    if agent_count == 0:
        raise OpenAIError(503, "No agents are currently connected")
    documents = [EmbeddingInputDocument(id=str(index), content=text) for index, text in enumerate(texts)]
    chunks = chunk_evenly_with_cap(
        documents, agent_count=agent_count, cap=state.inference_parameters.embedding_batch_size
    )
    requests: list[AgentRequest] = [
        GenerateEmbeddingBatchParams(input_batch=tuple(chunk), normalization_method=L2Normalization())
        for chunk in chunks
    ]
    vectors: dict[int, tuple[float, ...]] = {}
    replies = dispatcher.dispatch_all(requests)
    try:
        async for result in replies:
            if isinstance(result, EmbeddingProduced):
                vectors[int(result.embedding.source_document_id)] = result.embedding.embedding
            elif not isinstance(result, EmbeddingDone):
                raise _embedding_error(result)
    finally:
        replies.close()
    missing = [index for index in range(len(texts)) if index not in vectors]
    if missing:
        raise OpenAIError(502, f"The agents returned no embedding for input[{missing[0]}].")
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": index, "embedding": _encoded(vectors[index], encoding_format)}
            for index in range(len(texts))
        ],
        "model": model,
        "usage": {"prompt_tokens": 0, "total_tokens": 0},
    }


def _embedding_error(result: object) -> OpenAIError:
    if isinstance(result, DocumentExceedsBatchSize):
        return invalid_value(
            f"input[{result.source_document_id}]",
            f"This input has {result.document_tokens} tokens; an agent embeds at most {result.n_batch} (n_batch).",
            code="context_length_exceeded",
        )
    if isinstance(result, EmbeddingsDisabled):
        return OpenAIError(501, EMBEDDINGS_DISABLED_DESCRIPTION, code="embeddings_disabled")
    if isinstance(result, EmbeddingRejectedDueToActiveTokenGeneration):
        return OpenAIError(503, "An agent is still generating tokens and cannot embed now.")
    if isinstance(result, EmbeddingError):
        if result.message.startswith("failed to tokenize document"):  # the input holds a NUL byte
            return invalid_value("input", result.message)
        return OpenAIError(500, result.message)
    return OpenAIError(502, f"The agent produced no embeddings ({type(result).__name__}).")
