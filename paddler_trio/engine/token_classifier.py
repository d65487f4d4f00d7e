"""Which section of the reply each generated token belongs to: content, reasoning or tool call.

Markers (`<think>`, `</think>`, `<tool_call>`, `</tool_call>`) are recognised when the
model's vocabulary has each as a single token; models without them only produce content.
Reasoning markers are hidden from the visible text; tool-call markers stay in the raw
tool-call text (Paddler sends `<tool_call>{...}</tool_call>` as ToolCallTokens).
"""

from __future__ import annotations

import enum

import attrs

from paddler_trio.engine.model import LoadedModel


class Section(enum.Enum):
    CONTENT = "content"
    REASONING = "reasoning"
    TOOL_CALL = "tool_call"


_REASONING_MARKERS = ("<think>", "</think>")
_TOOL_CALL_MARKERS = ("<tool_call>", "</tool_call>")


def _single_token(model: LoadedModel, text: str) -> int | None:
    tokens = model.tokenize(text, add_special=False, parse_special=True)
    return tokens[0] if len(tokens) == 1 else None


@attrs.frozen
class SectionMarkers:
    """Token ids that open and close the reasoning and tool-call sections of one model."""

    opens: dict[int, Section]
    closes: dict[int, Section]
    reasoning_open_text: str | None

    @classmethod
    def of_model(cls, model: LoadedModel) -> "SectionMarkers":
        opens: dict[int, Section] = {}
        closes: dict[int, Section] = {}
        reasoning_open_text = None
        for section, (open_text, close_text) in (
            (Section.REASONING, _REASONING_MARKERS),
            (Section.TOOL_CALL, _TOOL_CALL_MARKERS),
        ):
            open_token, close_token = _single_token(model, open_text), _single_token(model, close_text)
            if open_token is None or close_token is None:
                continue
            opens[open_token] = section
            closes[close_token] = section
            if section is Section.REASONING:
                reasoning_open_text = open_text
        return cls(opens=opens, closes=closes, reasoning_open_text=reasoning_open_text)

    def prompt_opens_reasoning(self, prompt: str) -> bool:
        """Templates that pre-open `<think>` in the generation prompt start the reply in reasoning."""
        return self.reasoning_open_text is not None and prompt.rstrip().endswith(self.reasoning_open_text)


@attrs.define
class TokenClassifier:
    """Follows the section state of one reply, token by token."""

    markers: SectionMarkers
    section: Section = Section.CONTENT

    def classify(self, token: int) -> tuple[Section, bool, Section | None]:
        """Return (section the token counts in, whether its text is visible, section just closed)."""
        opened = self.markers.opens.get(token)
        if opened is not None and self.section is Section.CONTENT:
            self.section = opened
            return opened, opened is Section.TOOL_CALL, None
        closed = self.markers.closes.get(token)
        if closed is not None and closed is self.section:
            self.section = Section.CONTENT
            return closed, closed is Section.TOOL_CALL, closed
        return self.section, True, None
