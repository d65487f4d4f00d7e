"""One message of a conversation history, with plain or multi-part content.

``{"role": "user", "content": "Hi"}`` or ``{"role": "user", "content": [part, ...]}`` where a part is
``{"type": "text", "text": ...}`` or ``{"type": "image_url", "image_url": {"url": "data:...;base64,..."}}``.

Beyond Paddler: optional ``tool_calls`` (an assistant's calls, in OpenAI's shape), ``tool_call_id``
(the call a ``tool`` message answers) and ``name``, handed to the chat template; each is omitted
from the JSON when None, so Paddler's shape is unchanged.
"""

from __future__ import annotations

from typing import Union

import attrs


@attrs.frozen
class TextPart:
    """``{"type": "text", "text": ...}``."""

    text: str


@attrs.frozen
class ImageUrl:
    """``{"url": ...}``: a data URI (remote URLs are refused by the agent)."""

    url: str


@attrs.frozen
class ImageUrlPart:
    """``{"type": "image_url", "image_url": {"url": ...}}``."""

    image_url: ImageUrl


ContentPart = Union[TextPart, ImageUrlPart]


@attrs.frozen
class CalledFunction:
    """``{"name": ..., "arguments": "<JSON text>"}``: the function a tool call asked for."""

    name: str
    arguments: str


@attrs.frozen
class MessageToolCall:
    """``{"id": ..., "type": "function", "function": {...}}``: one tool call of an assistant message."""

    id: str
    function: CalledFunction


@attrs.frozen
class ConversationMessage:
    """``{"role": str, "content": str | [ContentPart]}`` plus the optional tool-call keys; nothing else."""

    role: str
    content: str | tuple[ContentPart, ...]
    tool_calls: tuple[MessageToolCall, ...] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    @property
    def text(self) -> str:
        """The message's text: the string content, or its text parts joined."""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content if isinstance(part, TextPart))

    @property
    def image_urls(self) -> tuple[str, ...]:
        """The URLs of the message's image parts, in order."""
        if isinstance(self.content, str):
            return ()
        return tuple(part.image_url.url for part in self.content if isinstance(part, ImageUrlPart))
