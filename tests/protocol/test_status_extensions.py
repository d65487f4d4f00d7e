"""Our status extensions (`protocol.status_extensions`): they round-trip when reported, are left
out of the JSON when None (the snapshots stay exactly Paddler's), and are sent only to a balancer
that offers this version of them."""

from __future__ import annotations

import json

import attrs

from paddler_trio.protocol import (
    AgentControllerSnapshot,
    SlotAggregatedStatusSnapshot,
    StateApplicationStatus,
    from_json,
    to_json,
)
from paddler_trio.protocol.status_extensions import (
    STATUS_EXTENSION_FIELDS,
    STATUS_EXTENSIONS_HEADER,
    STATUS_EXTENSIONS_VERSION,
    offers_status_extensions,
)

EXTENSIONS = {
    "cache_states": 2,
    "cache_used_bytes": 3 * 2**20,
    "cache_limit_bytes": 64 * 2**20,
    "multimodal_projection_path": "/models/mmproj-gemma.gguf",
}
# Paddler 4.x's keys, in its order.
PADDLER_STATUS_KEYS = [
    "desired_slots_total", "download_current", "download_filename", "download_indeterminate", "download_total",
    "issues", "model_path", "slots_processing", "slots_total", "state_application_status",
    "uses_chat_template_override", "version",
]
PADDLER_AGENT_KEYS = [
    "desired_slots_total", "download_current", "download_filename", "download_indeterminate", "download_total",
    "id", "issues", "model_path", "name", "slots_processing", "slots_total", "state_application_status",
    "uses_chat_template_override",
    "kind",  # ours, on every agent (`AgentControllerSnapshot`): not a status extension
]

STATUS = SlotAggregatedStatusSnapshot(
    desired_slots_total=1,
    download_current=0,
    download_indeterminate=True,
    download_total=0,
    issues=frozenset(),
    model_path="/models/gemma.gguf",
    slots_processing=0,
    slots_total=1,
    state_application_status=StateApplicationStatus.APPLIED,
    uses_chat_template_override=False,
    version=3,
)
AGENT = AgentControllerSnapshot(
    desired_slots_total=1,
    download_current=0,
    download_indeterminate=True,
    download_total=0,
    id="a",
    issues=frozenset(),
    model_path="/models/gemma.gguf",
    name="gpu-0",
    slots_processing=0,
    slots_total=1,
    state_application_status=StateApplicationStatus.APPLIED,
    uses_chat_template_override=False,
)


def test_the_extension_fields_are_the_ones_both_snapshots_carry() -> None:
    assert set(STATUS_EXTENSION_FIELDS) == set(EXTENSIONS)
    for cls in (SlotAggregatedStatusSnapshot, AgentControllerSnapshot):
        assert set(STATUS_EXTENSION_FIELDS) <= {field.name for field in attrs.fields(cls)}


def test_reported_extensions_round_trip() -> None:
    for value in (attrs.evolve(STATUS, **EXTENSIONS), attrs.evolve(AGENT, **EXTENSIONS)):
        text = to_json(value)
        assert {key: json.loads(text)[key] for key in EXTENSIONS} == EXTENSIONS
        assert from_json(text, type(value)) == value


def test_without_extensions_the_snapshots_are_exactly_paddlers() -> None:
    for value, keys in ((STATUS, PADDLER_STATUS_KEYS), (AGENT, PADDLER_AGENT_KEYS)):
        assert list(json.loads(to_json(value))) == keys
    # Each extension is left out on its own.
    only_projector = json.loads(to_json(attrs.evolve(AGENT, multimodal_projection_path="/p.gguf")))
    assert list(only_projector) == [*PADDLER_AGENT_KEYS, "multimodal_projection_path"]


def test_only_this_version_of_the_offer_counts() -> None:
    header = STATUS_EXTENSIONS_HEADER.encode()
    assert offers_status_extensions([(header, STATUS_EXTENSIONS_VERSION.encode())])
    assert offers_status_extensions([(header.upper(), b" " + STATUS_EXTENSIONS_VERSION.encode())])
    assert not offers_status_extensions([(header, b"1")])  # before the projector: the agent would send a field it refuses
    assert not offers_status_extensions([])
