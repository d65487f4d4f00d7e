"""Keys pressed in the terminal, read without waiting for Enter (cbreak mode: Ctrl-C still signals)."""

from __future__ import annotations

import contextlib
import enum
import os
import sys
import termios
import tty
from collections.abc import AsyncIterator, Iterator

import trio


class Key(enum.Enum):
    UP = enum.auto()
    DOWN = enum.auto()
    QUIT = enum.auto()


_SEQUENCES = {
    b"\x1b[A": Key.UP,
    b"\x1bOA": Key.UP,
    b"\x1b[B": Key.DOWN,
    b"\x1bOB": Key.DOWN,
    b"k": Key.UP,
    b"j": Key.DOWN,
    b"q": Key.QUIT,
    b"Q": Key.QUIT,
    b"\x1b": Key.QUIT,
}


def decode_keys(data: bytes) -> list[Key]:
    """The keys in one read; an arrow key arrives as one escape sequence, a lone Esc quits."""
    keys: list[Key] = []
    index = 0
    while index < len(data):
        if data[index : index + 1] == b"\x1b" and index + 1 < len(data):
            # An escape sequence (arrows are three bytes); others are skipped whole.
            key = _SEQUENCES.get(data[index : index + 3])
            index += 3
        else:
            key = _SEQUENCES.get(data[index : index + 1])
            index += 1
        if key is not None:
            keys.append(key)
    return keys


@contextlib.contextmanager
def cbreak_terminal() -> Iterator[int | None]:
    """The stdin descriptor in cbreak mode (restored on exit), or None when stdin is not a terminal."""
    if not sys.stdin.isatty():
        yield None
        return
    descriptor = sys.stdin.fileno()
    saved = termios.tcgetattr(descriptor)
    tty.setcbreak(descriptor)
    try:
        yield descriptor
    finally:
        termios.tcsetattr(descriptor, termios.TCSADRAIN, saved)


async def read_keys(descriptor: int) -> AsyncIterator[Key]:
    while True:
        await trio.lowlevel.wait_readable(descriptor)
        data = os.read(descriptor, 64)
        if not data:
            return
        for key in decode_keys(data):
            yield key
