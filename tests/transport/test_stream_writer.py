"""`StreamWriter` on a real connected TCP pair: writes at once when idle, never while its task
writes, keeps every byte in order when the socket takes only part of a write, reports a
client that is gone, and inside `writes_held_together` writes each stream's share once, at
the block's end."""

from __future__ import annotations

import os

import pytest
import trio
import trio.testing

from paddler_trio.transport import stream_writer
from paddler_trio.transport.stream_writer import StreamWriter, writes_held_together
from tests.transport.tcp_pair import read_exactly, tcp_pair
from tests.waiting import wait_until


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
        await wait_until(lambda: not writer.send_now(b"b"), limit=5)
        assert not writer.can_send_now()
        with pytest.raises(trio.BrokenResourceError):
            await writer.send_all(b"c")


async def test_a_closed_stream_is_never_written_at_once_even_when_its_fd_number_is_reused() -> None:
    async with tcp_pair() as (server, client), trio.open_nursery() as nursery:
        writer = StreamWriter(server, nursery)
        closed_fd = server.socket.fileno()
        await server.aclose()
        async with tcp_pair() as (newcomer_server, newcomer_client):
            assert newcomer_server.socket.fileno() == closed_fd or newcomer_client.socket.fileno() == closed_fd
            assert not writer.can_send_now()
            assert not writer.send_now(b"for the closed connection only")
            with trio.move_on_after(0.2):
                received = await newcomer_client.receive_some(100) + await newcomer_server.receive_some(100)
                pytest.fail(f"a closed stream's bytes reached another connection: {received!r}")


async def test_a_stream_without_a_socket_is_written_by_send_all_only() -> None:
    left, right = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        writer = StreamWriter(left, nursery)
        assert not writer.can_send_now()
        assert not writer.send_now(b"at once")
        await writer.send_all(b"queued")
        assert await right.receive_some() == b"queued"


async def test_held_writes_reach_each_stream_in_one_write_at_the_end_of_the_block(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    writes: list[tuple[int, bytes]] = []
    real_write = os.write

    def counted_write(fd: int, data: bytes) -> int:
        writes.append((fd, data))
        return real_write(fd, data)

    monkeypatch.setattr(stream_writer.os, "write", counted_write)
    async with (
        tcp_pair() as (first_server, first_client),
        tcp_pair() as (second_server, second_client),
        trio.open_nursery() as nursery,
    ):
        first = StreamWriter(first_server, nursery)
        second = StreamWriter(second_server, nursery)
        with trio.testing.assert_no_checkpoints(), writes_held_together():
            assert first.send_now(b"a1 ")
            assert second.send_now(b"b1 ")
            assert first.send_now(b"a2 ")
            assert first.can_send_now()
            assert writes == []
        assert writes == [(first_server.socket.fileno(), b"a1 a2 "), (second_server.socket.fileno(), b"b1 ")]
        await first.send_all(b"a3")
        assert await read_exactly(first_client, 8) == b"a1 a2 a3"
        assert await read_exactly(second_client, 3) == b"b1 "
        # Outside a block, a write at once is made on the spot again.
        assert second.send_now(b"b2")
        assert writes[-1] == (second_server.socket.fileno(), b"b2")


async def test_a_held_write_only_partly_taken_is_finished_in_order() -> None:
    async with tcp_pair() as (server, client), trio.open_nursery() as nursery:
        writer = StreamWriter(server, nursery)
        big = b"y" * (16 * 2**20)  # more than the socket buffers take at once
        with writes_held_together():
            assert writer.send_now(big)
            assert writer.send_now(b"end")
        assert not writer.can_send_now()  # the rest of the held data waits to be written
        nursery.start_soon(writer.send_all, b"after")
        received = await read_exactly(client, len(big) + len(b"endafter"))
        assert received == big + b"endafter"
