"""Fields of a generation request that Paddler does not have: our extension of the requests the
balancer sends on the agent socket.

Beyond Paddler, generation requests may carry per-request sampling overrides
(`SAMPLING_OVERRIDE_FIELDS`) and conversation messages the tool-call keys
(`MESSAGE_EXTENSION_FIELDS`). Paddler's agents decode requests with `deny_unknown_fields`: a
request holding any of these keys fails to decode, and the agent drops it without an answer.

So the balancer sends them only to an agent that accepts them: our agent's upgrade request to
the agent socket carries `REQUEST_EXTENSIONS_HEADER`; a Paddler agent never sends it. Any other
agent gets requests in Paddler's own shape (`paddler_shaped`): an extension field at its default
is left out, and a request whose answer depends on one cannot be sent at all
(`InexpressibleFields`): it is refused, never silently changed.
"""

from __future__ import annotations

import attrs

from paddler_trio.protocol.agent_socket_messages import AgentRequest
from paddler_trio.protocol.continue_from_conversation_history_params import ContinueFromConversationHistoryParams
from paddler_trio.protocol.continue_from_raw_prompt_params import ContinueFromRawPromptParams

REQUEST_EXTENSIONS_HEADER = "x-paddler-trio-request-extensions"
# Version 1: the fields below, on both generation requests and on conversation messages.
REQUEST_EXTENSIONS_VERSION = "1"

SAMPLING_OVERRIDE_FIELDS = ("temperature", "top_p", "top_k", "min_p", "seed", "stop")
MESSAGE_EXTENSION_FIELDS = ("tool_calls", "tool_call_id", "name")


def accepts_request_extensions(header_value: str | None) -> bool:
    """Whether an agent's upgrade request offers the extensions (`header_value`: its
    `REQUEST_EXTENSIONS_HEADER`, None when absent)."""
    return header_value is not None and header_value.strip() == REQUEST_EXTENSIONS_VERSION


@attrs.frozen
class InexpressibleFields:
    """Extension fields a request sets that Paddler's request has no way to express, as paths
    into the request (`temperature`, `conversation_history[2].tool_calls`)."""

    fields: tuple[str, ...]


def paddler_shaped(request: AgentRequest) -> AgentRequest | InexpressibleFields:
    """`request` as a Paddler agent accepts it, or the fields it would have to lose.

    A field is at its default when it is absent (None); an empty `stop` list stops nothing, as
    no list does, so it is dropped too. Every other value changes the answer.
    """
    if not isinstance(request, (ContinueFromRawPromptParams, ContinueFromConversationHistoryParams)):
        return request
    fields = [name for name in SAMPLING_OVERRIDE_FIELDS if getattr(request, name) not in (None, ())]
    if isinstance(request, ContinueFromConversationHistoryParams):
        for index, message in enumerate(request.conversation_history):
            fields.extend(
                f"conversation_history[{index}].{name}"
                for name in MESSAGE_EXTENSION_FIELDS
                if getattr(message, name) is not None
            )
    if fields:
        return InexpressibleFields(tuple(fields))
    if request.stop is not None:
        return attrs.evolve(request, stop=None)
    return request
