"""The engine the agent serves requests with right now, and the chat template override it applies.

Reconciliation publishes an engine once it is loaded and withdraws it before closing it;
request handling reads it when a request arrives.
"""

from __future__ import annotations

import attrs

from paddler_trio.engine.engine import Engine
from paddler_trio.protocol import ChatTemplate


@attrs.define
class EngineHolder:
    engine: Engine | None = None
    chat_template_override: ChatTemplate | None = None

    def publish(self, engine: Engine, chat_template_override: ChatTemplate | None) -> None:
        self.engine = engine
        self.chat_template_override = chat_template_override

    def withdraw(self) -> None:
        self.engine = None
        self.chat_template_override = None
