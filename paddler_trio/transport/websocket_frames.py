"""A client's WebSocket bytes as whole frames (RFC 6455 section 5.2), and the common frame
decoded without wsproto.

`DirectWebSocket` reads every frame through `FrameSplitter`. A frame that is a whole message
by itself (final, masked as a client's must be, text or binary, no reserved bits, valid UTF-8
text) is decoded by `plain_message`: a header check, one XOR and one decode, where wsproto's
event machinery costs several times as much (a tenth of the balancer's CPU per engine step,
the agents' token frames being the most frequent frames it reads). Every other frame (pings,
closes, fragments, anything malformed) goes to wsproto whole, so what the protocol requires of
them, errors included, stays wsproto's.
"""

from __future__ import annotations

from collections.abc import Iterator

_FIN = 0x80
_RESERVED = 0x70
_OPCODE = 0x0F
_MASKED = 0x80
_LENGTH = 0x7F
_TEXT, _BINARY = 0x1, 0x2


class FrameTooBig(Exception):
    """A frame announces a payload over the splitter's limit."""


class FrameSplitter:
    """Buffers a client's bytes and hands them out a whole frame at a time; a frame whose
    header announces more than `max_payload_bytes` raises `FrameTooBig` before it is buffered."""

    def __init__(self, max_payload_bytes: int) -> None:
        self._max_payload_bytes = max_payload_bytes
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def frames(self) -> Iterator[bytes]:
        """Each whole frame buffered so far (header and payload), in order."""
        buffer = self._buffer
        start = 0
        try:
            while True:
                size = self._frame_size(start)
                if size is None:
                    return
                yield bytes(buffer[start : start + size])
                start += size
        finally:
            del buffer[:start]

    def _frame_size(self, start: int) -> int | None:
        buffer = self._buffer
        available = len(buffer) - start
        if available < 2:
            return None
        length = buffer[start + 1] & _LENGTH
        header = 2
        if length == 126:
            header = 4
            if available < header:
                return None
            length = int.from_bytes(buffer[start + 2 : start + 4], "big")
        elif length == 127:
            header = 10
            if available < header:
                return None
            length = int.from_bytes(buffer[start + 2 : start + 10], "big")
        if length > self._max_payload_bytes:
            raise FrameTooBig(length)
        if buffer[start + 1] & _MASKED:
            header += 4
        size = header + length
        return size if available >= size else None


def plain_message(frame: bytes) -> str | bytes | None:
    """The message of a frame that is one by itself (see the module docstring), else None."""
    first, second = frame[0], frame[1]
    opcode = first & _OPCODE
    if first & (_FIN | _RESERVED) != _FIN or opcode not in (_TEXT, _BINARY) or not second & _MASKED:
        return None
    length = second & _LENGTH
    offset = 2 if length < 126 else 4 if length == 126 else 10
    key, payload = frame[offset : offset + 4], frame[offset + 4 :]
    data = _unmask(payload, key)
    if opcode == _BINARY:
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None  # wsproto closes the connection with 1007


def _unmask(payload: bytes, key: bytes) -> bytes:
    size = len(payload)
    if not size:
        return b""
    repeated_key = (key * (size // 4 + 1))[:size]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(repeated_key, "little")).to_bytes(size, "little")
