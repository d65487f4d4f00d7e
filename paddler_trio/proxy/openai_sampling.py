"""Per-request sampling fields of the OpenAI routes: `temperature`, `top_p`, `seed`, `stop`.

Paddler ignores them (sampling is cluster-wide); here they become the native requests'
optional sampling overrides, which the agent's engine honours (spec "Where we go beyond
Paddler", item 6). Ranges are OpenAI's: temperature 0..2, top_p in (0, 1], up to 4 stop
strings, none of them empty.
"""

from __future__ import annotations

from typing import Any

import attrs

from paddler_trio.proxy.openai_errors import invalid_value
from paddler_trio.proxy.openai_request_fields import RequestObject, invalid_type

MAX_STOP_SEQUENCES = 4
_SEED_RANGE = 2**64


@attrs.frozen
class SamplingOverrides:
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] | None = None

    @classmethod
    def read(cls, body: RequestObject, *, with_seed_and_stop: bool = True) -> SamplingOverrides:
        top_p = body.number("top_p", minimum=0.0, maximum=1.0)
        if top_p == 0:
            raise invalid_value(
                body.param("top_p"), "top_p must be greater than 0 (use temperature 0 for greedy sampling)"
            )
        if not with_seed_and_stop:
            return cls(temperature=body.number("temperature", minimum=0.0, maximum=2.0), top_p=top_p)
        seed = body.integer("seed")
        return cls(
            temperature=body.number("temperature", minimum=0.0, maximum=2.0),
            top_p=top_p,
            # Any integer is a valid OpenAI seed; the engine's generators take unsigned 64-bit ones.
            seed=None if seed is None else seed % _SEED_RANGE,
            stop=_stop_sequences(body),
        )

    def fields(self) -> dict[str, Any]:
        """Keyword arguments for a native request's sampling overrides."""
        return attrs.asdict(self, recurse=False)


def _stop_sequences(body: RequestObject) -> tuple[str, ...] | None:
    value = body.data.get("stop")
    if value is None:
        return None
    param = body.param("stop")
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list):
        raise invalid_type(param, "a string or an array of strings", value)
    if len(stops) > MAX_STOP_SEQUENCES:
        raise invalid_value(param, f"'stop' takes at most {MAX_STOP_SEQUENCES} sequences, got {len(stops)}.")
    for index, stop in enumerate(stops):
        if not isinstance(stop, str):
            raise invalid_type(f"{param}[{index}]", "a string", stop)
        if not stop:
            raise invalid_value(f"{param}[{index}]", "A stop sequence must not be empty.")
    return tuple(stops) or None
