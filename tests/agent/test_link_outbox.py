"""`LinkOutbox`: what the agent sends on its link. An engine step's replies, handed on inside
`writes_held_together` while the writer task waits with nothing queued, leave at the block's end
in one frame and one write, with no task switch; a message sent while others wait in the queue
goes behind them, so nothing is reordered."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import pytest
import trio
import trio.testing

from paddler_trio.agent.management_link import LinkOutbox
from paddler_trio.protocol import ResponseEnvelope, to_json
from paddler_trio.protocol.generated_token_result import ContentToken
from paddler_trio.transport import stream_writer
from paddler_trio.transport.direct_websocket import DirectWebSocket, serve
from paddler_trio.transport.stream_writer import writes_held_together
from tests.transport.tcp_pair import tcp_pair
from tests.transport.websocket_peers import connect_client, read_upgrade_request


def token(request_id: str, text: str) -> ResponseEnvelope:
    return ResponseEnvelope(generated_by=None, request_id=request_id, response=ContentToken(text))


async def with_outbox(batching: bool, body: Callable[[LinkOutbox], object]) -> list[object]:
    """Run `body` with an outbox whose writer task waits, on a real TCP connection to our own
    WebSocket server; the server's messages, decoded, once both ends have closed."""
    received: list[object] = []

    async def server_handler(socket: DirectWebSocket) -> None:
        while True:
            text = await socket.receive()
            assert isinstance(text, str)
            if text == "end":
                await socket.close(1000, "")
                return
            received.append(json.loads(text))

    async def client_handler(socket: DirectWebSocket) -> None:
        outbox = LinkOutbox(socket, batching=batching)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outbox.write_queued, nursery.cancel_scope)
            await trio.testing.wait_all_tasks_blocked()
            await body(outbox)  # type: ignore[misc]
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        await socket.send_texts(["end"])

    async with tcp_pair() as (server_stream, client_stream), trio.open_nursery() as nursery:

        async def run_server() -> None:
            request = await read_upgrade_request(server_stream)
            await serve(server_stream, request, server_handler, max_message_bytes=1 << 20, ping_interval=None)

        nursery.start_soon(run_server)
        with trio.fail_after(10):
            await connect_client(client_stream, client_handler)
    return received


@pytest.mark.parametrize("batching", [True, False], ids=["batching", "one-per-frame"])
async def test_a_steps_replies_leave_at_the_end_of_the_hand_off_in_one_write(
    batching: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[bytes] = []
    real_write = os.write

    def counted_write(fd: int, data: bytes) -> int:
        writes.append(data)
        return real_write(fd, data)

    monkeypatch.setattr(stream_writer.os, "write", counted_write)

    async def one_step(outbox: LinkOutbox) -> None:
        with trio.testing.assert_no_checkpoints():
            with writes_held_together():
                assert outbox.send_now(token("r-1", "Hello"))
                assert outbox.send_now(token("r-2", "Once"))
                assert writes == []
            assert len(writes) == 1

    received = await with_outbox(batching, one_step)
    first, second = json.loads(to_json(token("r-1", "Hello"))), json.loads(to_json(token("r-2", "Once")))
    assert received == ([[first, second]] if batching else [first, second])


async def test_a_reply_sent_while_messages_wait_in_the_queue_goes_behind_them() -> None:
    queued = token("r-0", "queued")

    async def queued_then_step(outbox: LinkOutbox) -> None:
        await outbox.put(queued)  # wakes the writer: it no longer waits on an empty queue
        with writes_held_together():
            assert outbox.send_now(token("r-1", "Hello"))

    received = await with_outbox(True, queued_then_step)
    flat = [message for frame in received for message in (frame if isinstance(frame, list) else [frame])]
    assert flat == [json.loads(to_json(queued)), json.loads(to_json(token("r-1", "Hello")))]

