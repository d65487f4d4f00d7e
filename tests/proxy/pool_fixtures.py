"""Agents for unit tests of the pool and the buffer: controllers with a status, no socket."""

from __future__ import annotations

from typing import Any

import attrs
import trio

from paddler_trio.protocol import AgentKind, LlamaServerStatus
from paddler_trio.proxy.agent_controller import AgentController
from tests.proxy.scripted_fake_agent import status_snapshot


def agent(agent_id: str, *, slots: int = 1, model_path: str | None = "/m.gguf") -> AgentController:
    outbox, _ = trio.open_memory_channel[Any](100)
    return AgentController(
        id=agent_id, name=agent_id, status=status_snapshot(slots=slots, model_path=model_path), outbox=outbox
    )


def llama_server_agent(agent_id: str, *, slots: int = 1, model_name: str = "qwen") -> AgentController:
    """An agent watching a llama-server that serves `model_name` (from /models/`model_name`.gguf)."""
    outbox, _ = trio.open_memory_channel[Any](100)
    status = attrs.evolve(
        status_snapshot(slots=slots, model_path=f"/models/{model_name}.gguf"),
        llama_server=LlamaServerStatus(external_llamacpp_addr="127.0.0.1:9", model_name=model_name),
    )
    return AgentController(id=agent_id, name=agent_id, status=status, outbox=outbox, kind=AgentKind.LLAMA_SERVER)
