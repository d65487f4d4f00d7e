"""`StreamWriter` on a real connected TCP pair: writes at once when idle, never while its task
writes, keeps every byte in order when the socket takes only part of a write, and reports a
client that is gone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from paddler_trio.proxy.stream_writer import StreamWriter


@asynccontextmanager
async def tcp_pair() -> AsyncIterator[tuple[trio.SocketStream, trio.SocketStream]]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    for listener in listeners:
        await listener.aclose()
    async with client, server:
        yield server, client


async def read_exactly(stream: trio.SocketStream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        data += await stream.receive_some(size - len(data))
    return data


async def test_an_idle_writer_writes_at_once_without_a_checkpoint() -> None:
    async with tcp_pair() as (server, client), trio.open_nursery() as nursery:
        writer = StreamWriter(server, nursery)
        assert writer.can_send_now()
        with trio.testing.assert_no_checkpoints():
            assert writer.send_now(b"token 1\n")
        await writer.send_all(b"token 2\n")
        assert await read_exactly(client, 16) == b"token 1\ntoken 2\n"


async def test_nothing_is_written_at_once_while_the_writer_task_writes() -> None:
    async with tcp_pair() as (server, client), trio.open_nursery() as nursery:
        writer = StreamWriter(server, nursery)
        big = b"x" * (16 * 2**20)  # more than the socket buffers: the write waits for the reader
        nursery.start_soon(writer.send_all, big)
        await trio.testing.wait_all_tasks_blocked()
        assert not writer.can_send_now()
        assert not writer.send_now(b"overtaking\n")
        received = await read_exactly(client, len(big))
        assert received == big


async def test_a_partial_write_is_finished_in_order_before_anything_after_it() -> None:
    async with tcp_pair() as (server, client), trio.open_nursery() as nursery:
        writer = StreamWriter(server, nursery)
        # Fill the socket buffers with writes at once until one is only partly taken.
        written = bytearray()
        piece = 0
        while writer.can_send_now():
            data = f"{piece:08d}".encode() * 8192
            assert writer.send_now(data)
            written += data
            piece += 1
        assert not writer.send_now(b"refused")  # the rest of the last piece waits to be written
        nursery.start_soon(writer.send_all, b"after")
        received = await read_exactly(client, len(written) + len(b"after"))
        assert received == bytes(written) + b"after"
        await trio.testing.wait_all_tasks_blocked()
        assert writer.can_send_now()


async def test_a_client_that_is_gone_refuses_writes_at_once_and_fails_the_next_send_all() -> None:
    async with tcp_pair() as (server, client), trio.open_nursery() as nursery:
        writer = StreamWriter(server, nursery)
        await client.aclose()
        # The first write may still be accepted by the kernel; the peer's reset makes the next fail.
        writer.send_now(b"a")
        await trio.sleep(0.05)
        while writer.send_now(b"b"):
            await trio.sleep(0.01)
        assert not writer.can_send_now()
        with pytest.raises(trio.BrokenResourceError):
            await writer.send_all(b"c")


async def test_a_stream_without_a_socket_is_written_by_send_all_only() -> None:
    left, right = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        writer = StreamWriter(left, nursery)
        assert not writer.can_send_now()
        assert not writer.send_now(b"at once")
        await writer.send_all(b"queued")
        assert await right.receive_some() == b"queued"
