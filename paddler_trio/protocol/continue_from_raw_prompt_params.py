"""Body of ``POST /api/v1/continue_from_raw_prompt`` (the prompt is used as is, no template).

Beyond Paddler: the same optional sampling overrides as conversation requests, omitted from the
JSON when None.
"""

from __future__ import annotations

import attrs

from paddler_trio.protocol.grammar_constraint import GrammarConstraint
from paddler_trio.protocol.sampling_bounds import sampling_problems


@attrs.frozen(kw_only=True)
class ContinueFromRawPromptParams:
    """``{"grammar"?, "max_tokens", "raw_prompt"}`` in Paddler's order."""

    grammar: GrammarConstraint | None = None
    max_tokens: int
    raw_prompt: str
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] | None = None

    def validate(self) -> list[str]:
        """Out-of-range sampling overrides, as human sentences."""
        return sampling_problems(temperature=self.temperature, top_p=self.top_p, min_p=self.min_p, top_k=self.top_k)
