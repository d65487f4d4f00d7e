"""`websocket_frames`: a client's bytes come out as whole frames however they arrive, the
common frame decodes to the message wsproto's client encoded, and every other frame is left
to wsproto."""

from __future__ import annotations

import os

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, Ping, Request, TextMessage

from paddler_trio.transport.websocket_frames import (
    FrameSplitter,
    FrameTooBig,
    plain_message,
)


def open_client() -> WSConnection:
    """A wsproto client past its handshake, to frame messages as a real client does (masked)."""
    client = WSConnection(ConnectionType.CLIENT)
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="localhost", target="/")))
    next(server.events())
    client.receive_data(server.send(AcceptConnection()))
    next(client.events())
    return client


def split(data: bytes, *, piece: int, limit: int = 2**20) -> list[bytes]:
    splitter = FrameSplitter(limit)
    frames: list[bytes] = []
    for start in range(0, len(data), piece):
        splitter.feed(data[start : start + piece])
        frames.extend(splitter.frames())
    return frames


@pytest.mark.parametrize("size", [0, 5, 125, 126, 300, 65535, 65536, 200_000])
def test_a_message_of_any_length_comes_out_as_it_went_in(size: int) -> None:
    client = open_client()
    text = "é" * (size // 2) + "x" * (size % 2)
    frame = client.send(TextMessage(data=text))
    for piece in (1, 7, len(frame)):
        if piece == 1 and size > 1000:
            continue
        assert split(frame, piece=piece) == [frame]
    assert plain_message(frame) == text


def test_frames_arriving_together_come_out_one_by_one_in_order() -> None:
    client = open_client()
    frames = [client.send(TextMessage(data=f"message {n}")) for n in range(5)]
    data = os.urandom(1000)
    binary = client.send(BytesMessage(data=data))
    assert split(b"".join([*frames, binary]), piece=4096) == [*frames, binary]
    assert [plain_message(frame) for frame in frames] == [f"message {n}" for n in range(5)]
    assert plain_message(binary) == data


def test_frames_that_are_not_a_whole_message_by_themselves_are_left_to_wsproto() -> None:
    client = open_client()
    first_part = client.send(TextMessage(data="hel", message_finished=False))
    last_part = client.send(TextMessage(data="lo", message_finished=True))
    ping = client.send(Ping(payload=b"?"))
    text = client.send(TextMessage(data="ok"))
    unmasked = bytes([text[0], text[1] & 0x7F]) + b"ok"
    reserved_bit = bytes([text[0] | 0x40]) + text[1:]
    invalid_utf8 = client.send(BytesMessage(data=b"\xff\xfe"))
    invalid_utf8 = bytes([(invalid_utf8[0] & 0xF0) | 0x1]) + invalid_utf8[1:]  # binary bytes, text opcode
    for frame in (first_part, last_part, ping, unmasked, reserved_bit, invalid_utf8):
        assert plain_message(frame) is None, frame
    assert plain_message(text) == "ok"


def test_a_frame_announcing_more_than_the_limit_is_refused_before_it_is_buffered() -> None:
    client = open_client()
    frame = client.send(TextMessage(data="x" * 5000))
    splitter = FrameSplitter(4096)
    splitter.feed(frame[:10])  # the header alone
    with pytest.raises(FrameTooBig):
        list(splitter.frames())
    assert split(frame, piece=len(frame), limit=5000) == [frame]
