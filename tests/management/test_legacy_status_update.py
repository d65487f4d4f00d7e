"""Reading Paddler 1.x and Rower status updates (spec "paddler-1x-llama-server-mode" 2.3, 2.4, 3.4):
every outcome of the agent's poll, in each format, as the balancer lists it."""

from __future__ import annotations

from typing import Any

import pytest

from paddler_trio.management.legacy_status_update import InvalidStatusUpdate, read_status_update
from paddler_trio.protocol import LegacyStatusStream
from tests.legacy_agent_payloads import PADDLER_1_2_STATUS, ROWER_STATUS

ADDR = "10.0.0.5:8080"

PADDLER_1_2_OK: dict[str, Any] = {
    **PADDLER_1_2_STATUS,
    "agent_name": None,
    "external_llamacpp_addr": ADDR,
    "idle_slots_count": 1,
    "processing_slots_count": 1,
    "slots": [{"id": 0, "is_processing": True}, {"id": 1, "is_processing": False}],
}
ROWER_OK: dict[str, Any] = {
    **ROWER_STATUS,
    "agent_name": "r",
    "external_llamacpp_addr": ADDR,
    "slots_idle": 3,
    "slots_processing": 1,
}
NO_SLOTS_1_2 = {"idle_slots_count": 0, "processing_slots_count": 0, "slots": []}
NO_SLOTS_ROWER = {"slots_idle": 0, "slots_processing": 0}


def issue_names(fields: dict[str, Any]) -> list[str]:
    return sorted(type(issue).__name__ for issue in read_status_update(fields).issues)


def test_healthy_updates_of_both_formats() -> None:
    paddler = read_status_update(PADDLER_1_2_OK)
    assert (paddler.format, paddler.slots_idle, paddler.slots_processing, paddler.issues) == (
        LegacyStatusStream.PADDLER_1X, 1, 1, frozenset()
    )
    rower = read_status_update({**ROWER_OK, "unknown_key": 1})
    assert (rower.format, rower.agent_name, rower.slots_idle, rower.slots_processing, rower.issues) == (
        LegacyStatusStream.ROWER, "r", 3, 1, frozenset()
    )
    snapshot = rower.snapshot(version=7)
    assert (snapshot.slots_total, snapshot.slots_processing, snapshot.version) == (4, 1, 7)
    assert snapshot.llama_server is not None and snapshot.llama_server.external_llamacpp_addr == ADDR


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        # Paddler 1.2 (spec 2.3)
        ({**PADDLER_1_2_OK, **NO_SLOTS_1_2, "is_authorized": False, "is_slots_endpoint_enabled": None}, ["LlamaServerRefusedApiKey"]),
        ({**PADDLER_1_2_OK, **NO_SLOTS_1_2, "is_authorized": None, "is_slots_endpoint_enabled": False}, ["LlamaServerSlotsEndpointIsDisabled"]),
        (
            {**PADDLER_1_2_OK, **NO_SLOTS_1_2, "error": "Unexpected error: Unexpected response status", "is_authorized": None},
            ["LlamaServerAgentReportedError"],
        ),
        # Paddler 1.0 left is_authorized out; under 1.2's rule that agent is not usable.
        ({key: value for key, value in PADDLER_1_2_OK.items() if key != "is_authorized"}, ["LlamaServerAgentReportedError"]),
        # Rower (spec 2.3)
        ({**ROWER_OK, **NO_SLOTS_ROWER, "error": "Unauthorized", "is_authorized": False, "is_slots_endpoint_enabled": None}, ["LlamaServerRefusedApiKey"]),
        ({**ROWER_OK, **NO_SLOTS_ROWER, "error": "Not implemented", "is_authorized": None, "is_slots_endpoint_enabled": False}, ["LlamaServerSlotsEndpointIsDisabled"]),
        ({**ROWER_OK, **NO_SLOTS_ROWER, "error": "Unexpected response status", "is_unexpected_response_status": True}, ["LlamaServerAnsweredUnexpectedly"]),
        ({**ROWER_OK, **NO_SLOTS_ROWER, "error": "Request to http://x/slots failed: refused", "is_connect_error": True}, ["LlamaServerIsUnreachable"]),
        ({**ROWER_OK, **NO_SLOTS_ROWER, "error": "error decoding response body", "is_deserialize_error": True}, ["LlamaServerAgentReportedError"]),
        # Under Rower's rule a null flag is a problem too.
        ({**ROWER_OK, "is_decode_error": None}, ["LlamaServerAgentReportedError"]),
    ],
)
def test_each_failure_becomes_one_issue(fields: dict[str, Any], expected: list[str]) -> None:
    assert issue_names(fields) == expected


def test_issues_say_what_is_wrong() -> None:
    (issue,) = read_status_update({**ROWER_OK, **NO_SLOTS_ROWER, "error": "Unauthorized", "is_authorized": False}).issues
    assert issue.llamacpp_addr == ADDR
    assert "--llamacpp-api-key" in issue.description


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ([], "expected a JSON object"),
        ({"agent_name": "x"}, "neither a Paddler 1.x"),
        ({**ROWER_OK, "external_llamacpp_addr": None}, '"external_llamacpp_addr" is null'),
        ({key: value for key, value in ROWER_OK.items() if key != "slots_processing"}, 'missing field "slots_processing"'),
        ({**ROWER_OK, "slots_idle": -1}, "negative"),
        ({**ROWER_OK, "slots_idle": True}, 'field "slots_idle" should be int'),
        ({**PADDLER_1_2_OK, "is_authorized": "yes"}, 'field "is_authorized" should be bool'),
    ],
)
def test_invalid_updates_are_explained(fields: Any, problem: str) -> None:
    with pytest.raises(InvalidStatusUpdate, match=problem):
        read_status_update(fields)
