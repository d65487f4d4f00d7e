"""Agents for unit tests of the pool and the buffer: controllers with a status, no socket."""

from __future__ import annotations

from typing import Any

import trio

from paddler_trio.proxy.agent_controller import AgentController
from tests.proxy.scripted_fake_agent import status_snapshot


def agent(agent_id: str, *, slots: int = 1, model_path: str | None = "/m.gguf") -> AgentController:
    outbox, _ = trio.open_memory_channel[Any](100)
    return AgentController(
        id=agent_id, name=agent_id, status=status_snapshot(slots=slots, model_path=model_path), outbox=outbox
    )
