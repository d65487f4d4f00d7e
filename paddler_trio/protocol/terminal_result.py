"""Whether a streamed result ends its request's stream, for either kind of request."""

from __future__ import annotations

from paddler_trio.protocol import embedding_result, generated_token_result
from paddler_trio.protocol.embedding_result import EmbeddingResult
from paddler_trio.protocol.generated_token_result import GeneratedTokenResult


def is_terminal(result: GeneratedTokenResult | EmbeddingResult) -> bool:
    """True for a generation's or an embedding batch's ``Done`` and for every error result."""
    return generated_token_result.is_terminal(result) or embedding_result.is_terminal(result)
