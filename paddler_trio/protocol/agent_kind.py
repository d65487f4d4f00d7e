"""What an agent is, as the balancer lists it (``kind`` in ``GET /api/v1/agents``; ours, not Paddler's)."""

from __future__ import annotations

import enum


class AgentKind(enum.StrEnum):
    """``engine``: runs llama.cpp itself, takes the balancer's desired state and requests over its
    socket (our agents and Paddler 4.x agents). ``llama_server``: watches a separately started
    llama-server and only reports on it (Paddler 1.x's mode); it never gets a desired state or a
    request over its link."""

    ENGINE = "engine"
    LLAMA_SERVER = "llama_server"


class LegacyStatusStream(enum.StrEnum):
    """Which unmodified agent reports over an HTTP status stream (docs/llama_server_agents.md)."""

    PADDLER_1X = "paddler_1x"  # POST /status_update/{id}, Paddler 1.0-1.2
    ROWER = "rower"  # POST /api/v1/agent_status_update/{id}, Paddler main before 2.0 and Rower
