"""One message of a conversation history, with plain or multi-part content.

``{"role": "user", "content": "Hi"}`` or ``{"role": "user", "content": [part, ...]}`` where a part is
``{"type": "text", "text": ...}`` or ``{"type": "image_url", "image_url": {"url": "data:...;base64,..."}}``.
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
class ConversationMessage:
    """``{"role": str, "content": str | [ContentPart]}``; no other keys are accepted."""

    role: str
    content: str | tuple[ContentPart, ...]

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
