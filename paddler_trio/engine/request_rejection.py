"""A request the engine ends before (or instead of) generating: carries the terminal result."""

from __future__ import annotations

from paddler_trio.protocol import GeneratedTokenResult


class RequestRejected(Exception):
    def __init__(self, result: GeneratedTokenResult) -> None:
        super().__init__(getattr(result, "message", repr(result)))
        self.result = result
