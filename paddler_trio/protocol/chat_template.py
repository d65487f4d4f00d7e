"""A Jinja chat template, as sent in a chat template override."""

from __future__ import annotations

import attrs


@attrs.frozen
class ChatTemplate:
    """``{"content": "<jinja>"}``."""

    content: str
