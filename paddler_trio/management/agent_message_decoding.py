"""Reading an agent's frames: token replies (one per generated token, by far the most
frequent frame) on a fast path, everything else through the full protocol decoder. A frame
holds one message, or (from our agents, see `protocol.reply_batching`) an array of them.

The fast path reads the JSON with the standard parser and checks the exact shape of a
`{"Response": {"generated_by", "request_id", "response": {"GeneratedToken": {<token kind>: str}}}}`
frame by hand, which costs a fraction of the converter's generic union dispatch. Anything
else, or anything slightly off (extra or missing keys, wrong types, invalid JSON), goes to
`from_json`, so what is accepted and every error message stay exactly the converter's.
"""

from __future__ import annotations

import json
from typing import Any

from paddler_trio.protocol import (
    BalancerBoundMessage,
    ContentToken,
    ReasoningToken,
    ResponseEnvelope,
    ToolCallToken,
    UndeterminableToken,
    WireFormatError,
    from_json,
    parse_json,
    structure,
)

_TOKEN_KINDS: dict[str, type[ContentToken | ReasoningToken | ToolCallToken | UndeterminableToken]] = {
    cls.__name__: cls for cls in (ContentToken, ReasoningToken, ToolCallToken, UndeterminableToken)
}


def decode_agent_frame(text: str) -> tuple[list[Any], list[str]]:
    """The `BalancerBoundMessage`s in one text frame, and a description of each part that is not one.

    A frame that is a single message decodes as `decode_agent_message`; one that is an array
    yields its valid elements in order, so one bad element costs only itself.
    """
    if not text.startswith("["):
        try:
            return [decode_agent_message(text)], []
        except WireFormatError as error:
            return [], [str(error)]
    try:
        elements = parse_json(text)
    except WireFormatError as error:
        return [], [str(error)]
    messages: list[Any] = []
    problems: list[str] = []
    for index, element in enumerate(elements):
        message = _token_reply(element)
        if message is None:
            try:
                message = structure(element, BalancerBoundMessage)
            except WireFormatError as error:
                problems.append(f"message {index} of the frame: {error}")
                continue
        messages.append(message)
    return messages, problems


def decode_agent_message(text: str) -> Any:
    """The `BalancerBoundMessage` in one text frame; raises `WireFormatError` as `from_json` does."""
    if text.startswith('{"Response":'):
        try:
            reply = _token_reply(json.loads(text))
        except (ValueError, RecursionError):
            reply = None
        if reply is not None:
            return reply
    return from_json(text, BalancerBoundMessage)


def _token_reply(data: Any) -> ResponseEnvelope[Any] | None:
    if type(data) is not dict or len(data) != 1:
        return None
    envelope = data.get("Response")
    if type(envelope) is not dict or len(envelope) != 3:
        return None
    generated_by = envelope.get("generated_by", 0)
    request_id = envelope.get("request_id")
    response = envelope.get("response")
    if not (generated_by is None or type(generated_by) is str) or type(request_id) is not str:
        return None
    if type(response) is not dict or len(response) != 1:
        return None
    result = response.get("GeneratedToken")
    if type(result) is not dict or len(result) != 1:
        return None
    ((kind, token),) = result.items()
    token_class = _TOKEN_KINDS.get(kind)
    if token_class is None or type(token) is not str:
        return None
    return ResponseEnvelope(generated_by=generated_by, request_id=request_id, response=token_class(token))
