#!/usr/bin/env python3
"""Per-message cost of the wire codec on the token hot path, in microseconds (best of 5 timeit runs).

Measures writing and reading one token message (``ResponseEnvelope`` holding a ``ContentToken``)
and, for comparison, the terminal ``Done`` message and the plain ``json`` calls underneath.
Prints one JSON line.
"""

from __future__ import annotations

import json
import timeit
from collections.abc import Callable
from typing import Any

from paddler_trio.protocol import (
    BalancerBoundMessage,
    ContentToken,
    GenerationDone,
    InferenceClientBoundMessage,
    ResponseEnvelope,
    TokenUsage,
    from_json,
    to_json,
)

NUMBER = 50_000


def microseconds(operation: Callable[[], Any]) -> float:
    return round(min(timeit.repeat(operation, number=NUMBER, repeat=5)) / NUMBER * 1e6, 3)


def main() -> None:
    token = ResponseEnvelope("agent-1", "V1StGXR8", ContentToken(" world"))
    done = ResponseEnvelope(None, "V1StGXR8", GenerationDone(TokenUsage(prompt_tokens=12, content_tokens=200)))
    token_line = to_json(token)
    done_line = to_json(done)
    figures = {
        "to_json_token_us": microseconds(lambda: to_json(token)),
        "to_json_done_us": microseconds(lambda: to_json(done)),
        "from_json_token_agent_socket_us": microseconds(lambda: from_json(token_line, BalancerBoundMessage)),
        "from_json_token_inference_socket_us": microseconds(lambda: from_json(token_line, InferenceClientBoundMessage)),
        "from_json_done_us": microseconds(lambda: from_json(done_line, BalancerBoundMessage)),
        "json_loads_token_us": microseconds(lambda: json.loads(token_line)),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
