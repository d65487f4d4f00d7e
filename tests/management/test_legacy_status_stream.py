"""Unmodified Paddler 1.x and Rower agents reporting to a real balancer over their HTTP status
streams (spec "paddler-1x-llama-server-mode" 2.4 and 5), replayed byte for byte as those agents
send them: one long chunked POST, one JSON object per chunk, no delimiter; and how the balancer
splits such a body into objects."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
import trio

from paddler_trio.cli_values import socket_address
from paddler_trio.management import legacy_status_stream
from paddler_trio.management.legacy_status_stream import ConcatenatedJsonObjects, InvalidStream
from tests.balancer_process import balancer_process
from tests.legacy_agent_payloads import PADDLER_1_2_STATUS, ROWER_STATUS
from tests.proxy.balancer_harness import running_balancer
from tests.waiting import wait_until

# Spec 2.3: what Rower reports when llama-server is down.
ROWER_CONNECT_FAILURE: dict[str, Any] = {
    **ROWER_STATUS,
    "error": "Request to http://127.0.0.1:8080/slots failed: error sending request for url (http://127.0.0.1:8080/slots)",
    "is_authorized": None,
    "is_connect_error": True,
    "is_request_error": True,
    "slots_idle": 0,
}


class StatusStream:
    """An agent's status stream as reqwest sends it: chunked, no Content-Type, no newline."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream

    @classmethod
    async def open(cls, management: str, path: str) -> StatusStream:
        host, _, port = management.rpartition(":")
        stream = await trio.open_tcp_stream(host, int(port))
        await stream.send_all(
            f"POST {path} HTTP/1.1\r\nhost: {management}\r\ntransfer-encoding: chunked\r\naccept: */*\r\n\r\n".encode()
        )
        return cls(stream)

    async def send_chunk(self, data: bytes) -> None:
        await self._stream.send_all(b"%x\r\n%s\r\n" % (len(data), data))

    async def send(self, status: dict[str, Any]) -> None:
        await self.send_chunk(json.dumps(status, separators=(",", ":")).encode())

    async def finish(self) -> bytes:
        """End the body; the balancer's answer."""
        await self._stream.send_all(b"0\r\n\r\n")
        return await self.answer()

    async def answer(self) -> bytes:
        """The balancer's answer (status line and headers)."""
        answer = b""
        with trio.fail_after(5):
            while b"\r\n\r\n" not in answer:
                answer += await self._stream.receive_some()
        return answer

    async def aclose(self) -> None:
        await self._stream.aclose()


async def agents(management: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"http://{management}/api/v1/agents")).json()["agents"]


async def agent(management: str, agent_id: str) -> dict[str, Any] | None:
    return next((entry for entry in await agents(management) if entry["id"] == agent_id), None)


async def test_a_paddler_1_2_agent_registers_reports_and_leaves() -> None:
    agent_id = str(uuid.uuid4())
    async with balancer_process() as balancer:
        stream = await StatusStream.open(balancer.management, f"/status_update/{agent_id}")
        await stream.send(PADDLER_1_2_STATUS)
        await wait_until(lambda: agent(balancer.management, agent_id))
        shown = await agent(balancer.management, agent_id)
        assert shown is not None
        assert shown["name"] == "paddler-1.2"
        assert shown["kind"] == "llama_server"
        assert shown["legacy_status_stream"] == "paddler_1x"
        assert shown["llama_server"] == {"external_llamacpp_addr": "127.0.0.1:8081", "model_name": None}
        assert (shown["slots_total"], shown["slots_processing"], shown["issues"]) == (4, 1, [])

        # Spec 2.3: llama-server answered 401.
        await stream.send(
            {**PADDLER_1_2_STATUS, "idle_slots_count": 0, "processing_slots_count": 0, "slots": [], "is_authorized": False}
        )

        async def refused() -> bool:
            shown = await agent(balancer.management, agent_id)
            return shown is not None and [next(iter(issue)) for issue in shown["issues"]] == ["LlamaServerRefusedApiKey"]

        await wait_until(refused)
        assert (await stream.finish()).startswith(b"HTTP/1.1 202")
        await wait_until(lambda: _gone(balancer.management, agent_id))
        await stream.aclose()
    assert any(f"agent {agent_id} (paddler-1.2) registered by a paddler_1x status stream" in line for line in balancer.log)


async def test_a_rower_stream_survives_silence_and_any_chunking() -> None:
    agent_id = str(uuid.uuid4())
    async with balancer_process() as balancer:
        stream = await StatusStream.open(balancer.management, f"/api/v1/agent_status_update/{agent_id}")
        # One object cut across two chunks.
        first = json.dumps(ROWER_STATUS).encode()
        await stream.send_chunk(first[:20])
        await stream.send_chunk(first[20:])
        await wait_until(lambda: agent(balancer.management, agent_id))
        shown = await agent(balancer.management, agent_id)
        assert shown is not None
        assert (shown["kind"], shown["legacy_status_stream"]) == ("llama_server", "rower")
        assert shown["llama_server"]["external_llamacpp_addr"] == "[fd00::5]:8080"
        assert (shown["slots_total"], shown["slots_processing"], shown["issues"]) == (2, 0, [])

        # Longer than the management port's keep-alive timeout (5 s): a stream is bound only by its
        # silence limit (120 s). Real time on purpose: the balancer is a separate process here.
        await trio.sleep(6)
        # Two objects in one chunk; the second one counts.
        busy = {**ROWER_STATUS, "slots_idle": 1, "slots_processing": 1}
        await stream.send_chunk(json.dumps(ROWER_STATUS).encode() + json.dumps(ROWER_CONNECT_FAILURE).encode())

        async def unreachable() -> bool:
            shown = await agent(balancer.management, agent_id)
            return shown is not None and [next(iter(issue)) for issue in shown["issues"]] == ["LlamaServerIsUnreachable"]

        await wait_until(unreachable)
        shown = await agent(balancer.management, agent_id)
        assert shown is not None
        issue = shown["issues"][0]["LlamaServerIsUnreachable"]
        assert issue["llamacpp_addr"] == "[fd00::5]:8080"
        assert "error sending request" in issue["description"]

        await stream.send(busy)

        async def recovered() -> bool:
            shown = await agent(balancer.management, agent_id)
            return shown is not None and not shown["issues"] and shown["slots_processing"] == 1

        await wait_until(recovered)
        await stream.aclose()  # the agent's process dies: its connection closes
        await wait_until(lambda: _gone(balancer.management, agent_id))


async def test_a_reconnecting_agent_replaces_its_earlier_stream() -> None:
    agent_id = str(uuid.uuid4())
    async with balancer_process() as balancer:
        earlier = await StatusStream.open(balancer.management, f"/status_update/{agent_id}")
        await earlier.send(PADDLER_1_2_STATUS)
        await wait_until(lambda: agent(balancer.management, agent_id))
        # The earlier connection stays open (half-open, as far as the balancer can tell).
        later = await StatusStream.open(balancer.management, f"/status_update/{agent_id}")
        await later.send({**PADDLER_1_2_STATUS, "agent_name": "reconnected"})

        async def renamed() -> bool:
            shown = await agent(balancer.management, agent_id)
            return shown is not None and shown["name"] == "reconnected"

        await wait_until(renamed)
        assert [entry["id"] for entry in await agents(balancer.management)] == [agent_id]
        assert (await later.finish()).startswith(b"HTTP/1.1 202")
        await earlier.aclose()
        await later.aclose()


async def test_an_invalid_stream_is_refused_and_the_agent_removed() -> None:
    agent_id = str(uuid.uuid4())
    async with balancer_process() as balancer:
        stream = await StatusStream.open(balancer.management, f"/status_update/{agent_id}")
        await stream.send(PADDLER_1_2_STATUS)
        await wait_until(lambda: agent(balancer.management, agent_id))
        await stream.send_chunk(b"not json")
        answer = await stream.answer()
        assert answer.startswith(b"HTTP/1.1 400")
        await wait_until(lambda: _gone(balancer.management, agent_id))
        await stream.aclose()


async def test_with_an_agent_secret_unmodified_agents_are_refused() -> None:
    async with balancer_process("--agent-secret", "s3cret") as balancer:
        stream = await StatusStream.open(balancer.management, f"/api/v1/agent_status_update/{uuid.uuid4()}")
        await stream.send(ROWER_STATUS)
        answer = await stream.answer()
        assert answer.startswith(b"HTTP/1.1 401")
        assert await agents(balancer.management) == []
        await stream.aclose()
    assert any("cannot send the balancer's --agent-secret" in line for line in balancer.log)


async def test_the_slot_gauges_count_the_busy_slots_llama_server_reports() -> None:
    """Requests that clients send a llama-server directly count in `/metrics` and StatsD."""
    with trio.socket.socket(type=trio.socket.SOCK_DGRAM) as udp:
        await udp.bind(("127.0.0.1", 0))
        statsd = socket_address(f"127.0.0.1:{udp.getsockname()[1]}")
        async with running_balancer(statsd_prefix="paddler_", statsd_addr=statsd, statsd_reporting_interval=0.05) as balancer:
            await balancer.add_agent(slots=2)  # an engine agent, idle
            agent_id = str(uuid.uuid4())
            stream = await StatusStream.open(balancer.addresses.management, f"/api/v1/agent_status_update/{agent_id}")
            await stream.send({**ROWER_STATUS, "slots_idle": 1, "slots_processing": 3})
            await wait_until(lambda: agent(balancer.addresses.management, agent_id))
            metrics = (await balancer.http.get(f"{balancer.management}/metrics")).text
            assert "paddler_slots_processing 3\n" in metrics
            assert "paddler_slots_total 6\n" in metrics
            packets: set[str] = set()
            with trio.fail_after(5):
                while not {"paddler_slots_processing:3|g", "paddler_slots_total:6|g"} <= packets:
                    packets.add((await udp.recv(1024)).decode())
            await stream.aclose()


async def test_a_silent_stream_ends_after_the_silence_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A half-open connection would keep its agent listed forever; updates keep a stream alive."""
    monkeypatch.setattr(legacy_status_stream, "SILENCE_LIMIT", 0.5)
    agent_id = str(uuid.uuid4())
    async with running_balancer() as balancer:
        management = balancer.addresses.management
        stream = await StatusStream.open(management, f"/status_update/{agent_id}")
        await stream.send(PADDLER_1_2_STATUS)
        await wait_until(lambda: agent(management, agent_id))
        for _ in range(6):  # reporting for longer than the limit, more often than it
            await trio.sleep(0.2)
            await stream.send(PADDLER_1_2_STATUS)
        assert await agent(management, agent_id) is not None
        # Silent from now on, as if its machine were gone.
        assert (await stream.answer()).startswith(b"HTTP/1.1 408")
        await wait_until(lambda: _gone(management, agent_id))
        await stream.aclose()


async def _gone(management: str, agent_id: str) -> bool:
    return await agent(management, agent_id) is None


def test_objects_are_split_by_their_braces_not_by_chunks() -> None:
    stream = b'{"a":"}{\\"","b":[1,{"c":2}]} \n{"d":1}{"e"'
    objects = ConcatenatedJsonObjects()
    found = [found for index in range(len(stream)) for found in objects.feed(stream[index : index + 1])]
    assert found == [{"a": '}{"', "b": [1, {"c": 2}]}, {"d": 1}]
    assert objects.feed(b":3}") == [{"e": 3}]


@pytest.mark.parametrize("data", [b"[1]", b"null", b'{"a":1]', b'{"a":tru}'])
def test_anything_but_objects_is_an_invalid_stream(data: bytes) -> None:
    with pytest.raises(InvalidStream):
        ConcatenatedJsonObjects().feed(data)


def test_an_endless_object_is_an_invalid_stream() -> None:
    objects = ConcatenatedJsonObjects(max_object_bytes=100)
    with pytest.raises(InvalidStream, match="longer than 100 bytes"):
        objects.feed(b'{"a":"' + b"x" * 200)
