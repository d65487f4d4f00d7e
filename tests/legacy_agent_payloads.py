"""The status messages of unmodified Paddler 1.2 and Rower agents (spec paddler-1x-llama-server-mode
2.4), for tests that replay their HTTP status streams."""

from __future__ import annotations

from typing import Any

# Spec 2.4, Paddler 1.2's message (serde field order).
PADDLER_1_2_STATUS: dict[str, Any] = {
    "agent_name": "paddler-1.2",
    "error": None,
    "external_llamacpp_addr": "127.0.0.1:8081",
    "idle_slots_count": 3,
    "is_authorized": True,
    "is_slots_endpoint_enabled": True,
    "processing_slots_count": 1,
    "slots": [
        {"id": 0, "is_processing": True},
        {"id": 1, "is_processing": False},
        {"id": 2, "is_processing": False},
        {"id": 3, "is_processing": False},
    ],
}

# Spec 2.4, Rower's (and Paddler main's) message.
ROWER_STATUS: dict[str, Any] = {
    "agent_name": "rower",
    "error": None,
    "external_llamacpp_addr": "[fd00::5]:8080",
    "is_authorized": True,
    "is_connect_error": False,
    "is_decode_error": False,
    "is_deserialize_error": False,
    "is_request_error": False,
    "is_slots_endpoint_enabled": True,
    "is_unexpected_response_status": False,
    "slots_idle": 2,
    "slots_processing": 0,
}
