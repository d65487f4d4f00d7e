"""Body of ``POST /api/v1/continue_from_conversation_history`` (chat; the agent applies the template).

Beyond Paddler: optional per-request sampling overrides (``temperature``, ``top_p``, ``top_k``,
``min_p``, ``seed``, ``stop``); each is omitted from the JSON when None, so Paddler's shape is unchanged.
"""

from __future__ import annotations

import attrs

from paddler_trio.protocol.conversation_message import ConversationMessage
from paddler_trio.protocol.grammar_constraint import GrammarConstraint
from paddler_trio.protocol.sampling_bounds import sampling_problems
from paddler_trio.protocol.tool import Tool


@attrs.frozen(kw_only=True)
class ContinueFromConversationHistoryParams:
    """Fields in Paddler's order; ``grammar``, ``parse_tool_calls`` and ``tools`` may be omitted."""

    add_generation_prompt: bool
    conversation_history: tuple[ConversationMessage, ...]
    enable_thinking: bool
    grammar: GrammarConstraint | None = None
    max_tokens: int
    parse_tool_calls: bool = False
    tools: tuple[Tool, ...] = ()
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] | None = None

    def validate(self) -> list[str]:
        """Problems Paddler answers with 400 (tool schemas), plus out-of-range sampling overrides."""
        problems = [problem for tool in self.tools for problem in tool.validate()]
        problems.extend(
            sampling_problems(temperature=self.temperature, top_p=self.top_p, min_p=self.min_p, top_k=self.top_k)
        )
        return problems
