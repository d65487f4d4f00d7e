"""The one exception every decoding failure of a wire message raises."""

from __future__ import annotations


class WireFormatError(ValueError):
    """A message that is not valid JSON or does not match the expected wire shape.

    The message is a human sentence naming the offending field and its JSON path,
    e.g. ``missing field "max_tokens" in ContinueFromRawPromptParams``.
    """
