"""One status update of an unmodified Paddler 1.x or Rower agent (spec "paddler-1x-llama-server-mode",
2.3 and 2.4), read into the status snapshot our agents send.

The two payloads are told apart by their keys, not by the path they came on: Paddler 1.0-1.2
send `idle_slots_count`, `processing_slots_count` and `slots`; Paddler's main branch before 2.0
and Rower send `slots_idle`, `slots_processing` and `is_*_error` flags. Unknown keys are
ignored and missing optional keys read as null. Each version's own rule for a usable agent
(spec 3.4) is kept: whatever makes it unusable becomes an agent issue, named as precisely as
the payload allows (API key refused, `/slots` disabled, llama-server unreachable, unexpected
status), else the agent's own error text.
"""

from __future__ import annotations

from typing import Any

import attrs

from paddler_trio.protocol import (
    AgentIssue,
    LegacyStatusStream,
    LlamaServerAgentReportedError,
    LlamaServerAnsweredUnexpectedly,
    LlamaServerIsUnreachable,
    LlamaServerRefusedApiKey,
    LlamaServerSlotsEndpointIsDisabled,
    LlamaServerStatus,
    SlotAggregatedStatusSnapshot,
    StateApplicationStatus,
)

# Rower's flags: each true, or null, makes the agent unusable under its rules.
_ROWER_ERROR_FLAGS = (
    "is_connect_error",
    "is_decode_error",
    "is_deserialize_error",
    "is_request_error",
    "is_unexpected_response_status",
)


class InvalidStatusUpdate(ValueError):
    """A JSON object that is not a status update of either format."""


@attrs.frozen
class LegacyStatusUpdate:
    format: LegacyStatusStream
    agent_name: str | None
    external_llamacpp_addr: str
    slots_idle: int
    slots_processing: int
    issues: frozenset[AgentIssue]

    def snapshot(self, version: int) -> SlotAggregatedStatusSnapshot:
        total = self.slots_idle + self.slots_processing
        return SlotAggregatedStatusSnapshot(
            desired_slots_total=total,
            download_current=0,
            download_indeterminate=True,
            download_total=0,
            issues=self.issues,
            slots_processing=self.slots_processing,
            slots_total=total,
            state_application_status=StateApplicationStatus.FRESH,
            uses_chat_template_override=False,
            version=version,
            llama_server=LlamaServerStatus(external_llamacpp_addr=self.external_llamacpp_addr),
        )


def read_status_update(fields: Any) -> LegacyStatusUpdate:
    """Raises `InvalidStatusUpdate` naming what is wrong."""
    if not isinstance(fields, dict):
        raise InvalidStatusUpdate(f"expected a JSON object, got {type(fields).__name__}")
    if "slots_idle" in fields:
        status_format, idle_key, processing_key = LegacyStatusStream.ROWER, "slots_idle", "slots_processing"
    elif "idle_slots_count" in fields or "slots" in fields:
        status_format, idle_key, processing_key = LegacyStatusStream.PADDLER_1X, "idle_slots_count", "processing_slots_count"
    else:
        raise InvalidStatusUpdate('neither a Paddler 1.x ("idle_slots_count") nor a Rower ("slots_idle") status update')
    addr = _required(fields, "external_llamacpp_addr", str)
    issues = _issues(fields, status_format, addr)
    return LegacyStatusUpdate(
        format=status_format,
        agent_name=_optional(fields, "agent_name", str),
        external_llamacpp_addr=addr,
        slots_idle=_count(fields, idle_key),
        slots_processing=_count(fields, processing_key),
        issues=frozenset(issues),
    )


def _issues(fields: dict[str, Any], status_format: LegacyStatusStream, addr: str) -> list[AgentIssue]:
    error = _optional(fields, "error", str)
    is_authorized = _optional(fields, "is_authorized", bool)
    issues: list[AgentIssue] = []
    if is_authorized is False:
        issues.append(
            LlamaServerRefusedApiKey(
                description=f"llama-server at {addr} refused the agent (HTTP 401): check the agent's --llamacpp-api-key",
                llamacpp_addr=addr,
            )
        )
    if _optional(fields, "is_slots_endpoint_enabled", bool) is False:
        issues.append(
            LlamaServerSlotsEndpointIsDisabled(
                description=f"llama-server at {addr} has its /slots endpoint disabled (HTTP 501): start it without "
                "--no-slots (or with --slots)",
                llamacpp_addr=addr,
            )
        )
    flags = {name: _optional(fields, name, bool) for name in _ROWER_ERROR_FLAGS} if status_format is LegacyStatusStream.ROWER else {}
    if flags.get("is_connect_error"):
        issues.append(
            LlamaServerIsUnreachable(
                description=f"the agent cannot reach llama-server at {addr}: {error or 'connection failed'}",
                llamacpp_addr=addr,
            )
        )
    elif flags.get("is_unexpected_response_status"):
        issues.append(
            LlamaServerAnsweredUnexpectedly(
                description=f"llama-server at {addr} answered the agent's GET /slots with an unexpected status "
                "(a model still loading answers 503)",
                llamacpp_addr=addr,
            )
        )
    if issues:
        return issues
    if error is not None:
        return [_reported(addr, error)]
    # Nothing named, but the version's rule still finds the agent unusable (a field left null).
    if is_authorized is not True:
        return [_reported(addr, "it does not confirm that llama-server accepts it (is_authorized is not true)")]
    unknown = sorted(name for name, value in flags.items() if value is not False)
    if unknown:
        return [_reported(addr, f"it reports {', '.join(unknown)} as true or unknown")]
    return []


def _reported(addr: str, problem: str) -> LlamaServerAgentReportedError:
    return LlamaServerAgentReportedError(
        description=f"the agent watching llama-server at {addr} reports a problem: {problem}", llamacpp_addr=addr
    )


def _required(fields: dict[str, Any], name: str, kind: type) -> Any:
    if name not in fields:
        raise InvalidStatusUpdate(f'missing field "{name}"')
    value = _optional(fields, name, kind)
    if value is None:
        raise InvalidStatusUpdate(f'field "{name}" is null')
    return value


def _optional(fields: dict[str, Any], name: str, kind: type) -> Any:
    value = fields.get(name)
    # bool is an int in Python; a count is never a boolean.
    if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
        raise InvalidStatusUpdate(f'field "{name}" should be {kind.__name__}, got {value!r}')
    return value


def _count(fields: dict[str, Any], name: str) -> int:
    value = _required(fields, name, int)
    if value < 0:
        raise InvalidStatusUpdate(f'field "{name}" is negative: {value}')
    return value
