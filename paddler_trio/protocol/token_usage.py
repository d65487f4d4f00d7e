"""Token counts reported in the terminal ``Done`` message of a generation."""

from __future__ import annotations

import attrs


@attrs.frozen
class TokenUsage:
    """Paddler's ``TokenUsage``; all counts are non-negative integers."""

    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    input_image_tokens: int = 0
    input_audio_tokens: int = 0
    content_tokens: int = 0
    reasoning_tokens: int = 0
    tool_call_tokens: int = 0
    undeterminable_tokens: int = 0

    @property
    def completion_tokens(self) -> int:
        """Every generated token, whatever its kind."""
        return self.content_tokens + self.reasoning_tokens + self.tool_call_tokens + self.undeterminable_tokens

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion."""
        return self.prompt_tokens + self.completion_tokens
