"""Checks a generation request must pass before it is dispatched (HTTP 400 / WS 400 envelope)."""

from __future__ import annotations

from paddler_trio.protocol import ContinueFromConversationHistoryParams, ContinueFromRawPromptParams
from paddler_trio.security.request_limits import max_tokens_problem

_I32_MAX = 2**31 - 1


def generation_request_problems(
    params: ContinueFromConversationHistoryParams | ContinueFromRawPromptParams,
    *,
    max_tokens_limit: int | None = None,
) -> list[str]:
    """Tool schema and sampling override problems, plus a `max_tokens` that is negative, beyond
    i32, or beyond the balancer's `--max-tokens-limit`."""
    problems = params.validate()
    if params.max_tokens < 0:
        problems.append(f"max_tokens must not be negative (got {params.max_tokens})")
    elif params.max_tokens > _I32_MAX:
        problems.append(f"max_tokens must be at most {_I32_MAX} (got {params.max_tokens})")
    elif max_tokens_limit is not None and params.max_tokens > max_tokens_limit:
        problems.append(max_tokens_problem("max_tokens", params.max_tokens, max_tokens_limit))
    return problems


def invalid_parameters_description(problems: list[str]) -> str:
    return "Invalid request parameters: " + "; ".join(problems)
