"""A scripted fake balancer (test double): the agent-socket half of a balancer's management service.

It accepts `/api/v1/agent_socket/{agent_id}` on a loopback port, sends the Version
notification, records every message an agent sends (as parsed JSON), and lets a test send
SetState, requests and StopRespondingTo, and drop connections. Like Paddler's balancer it
offers no reply batching unless `offer_reply_batching` is set; then it unpacks batched
frames into their messages and counts the messages of each frame in `frame_sizes`. Nor does it
offer our status extensions unless `offer_status_extensions` is set.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

import trio
import trio_websocket

from paddler_trio import PADDLER_COMPATIBLE_VERSION
from paddler_trio.protocol.reply_batching import REPLY_BATCHING_HEADER, REPLY_BATCHING_VERSION
from paddler_trio.protocol.status_extensions import STATUS_EXTENSIONS_HEADER, STATUS_EXTENSIONS_VERSION

AGENT_SOCKET_PREFIX = "/api/v1/agent_socket/"
WAIT_TIMEOUT = 30.0

Frame = dict[str, Any]


class AgentConnection:
    def __init__(
        self, agent_id: str, socket: trio_websocket.WebSocketConnection, upgrade_headers: list[tuple[bytes, bytes]]
    ) -> None:
        self.agent_id = agent_id
        self.socket = socket
        # The headers of the agent's upgrade request, names in lower case.
        self.upgrade_headers = {name.decode().lower(): value.decode() for name, value in upgrade_headers}
        self.frames: list[Frame] = []
        # Messages per WebSocket frame, in arrival order (1 unless the agent batched).
        self.frame_sizes: list[int] = []
        self.closed = trio.Event()
        self._arrived = trio.Event()

    def mark_closed(self) -> None:
        self.closed.set()
        self._arrived.set()

    def record(self, frame: Frame) -> None:
        self.frames.append(frame)
        self._arrived.set()
        self._arrived = trio.Event()

    async def send(self, frame: Frame | str) -> None:
        await self.socket.send_message(frame if isinstance(frame, str) else json.dumps(frame))

    async def set_state(self, desired_state: Frame) -> None:
        await self.send({"Notification": {"SetState": {"desired_state": desired_state}}})

    async def request(self, request_id: str, request: Frame | str) -> None:
        await self.send({"Request": {"id": request_id, "request": request}})

    async def stop_responding_to(self, request_id: str) -> None:
        await self.send({"Notification": {"StopRespondingTo": request_id}})

    async def drop(self) -> None:
        """Close the link from the balancer's side."""
        await self.socket.aclose()

    async def wait_for(self, matches: Callable[[Frame], bool], *, start: int = 0, timeout: float = WAIT_TIMEOUT) -> int:
        """Index of the first frame from `start` on that `matches`; waits for it."""
        with trio.fail_after(timeout):
            index = start
            while True:
                while index < len(self.frames):
                    if matches(self.frames[index]):
                        return index
                    index += 1
                if self.closed.is_set():
                    raise AssertionError(f"the agent closed the link; frames: {self.frames[start:]}")
                await self._arrived.wait()

    async def wait_for_status(
        self, matches: Callable[[Frame], bool], *, start: int = 0, timeout: float = WAIT_TIMEOUT
    ) -> Frame:
        """The first status snapshot (registration or update) from `start` on that `matches`."""
        def is_matching_status(frame: Frame) -> bool:
            snapshot = snapshot_of(frame)
            return snapshot is not None and matches(snapshot)

        index = await self.wait_for(is_matching_status, start=start, timeout=timeout)
        snapshot = snapshot_of(self.frames[index])
        assert snapshot is not None
        return snapshot

    def latest_status(self) -> Frame:
        snapshots = [s for frame in self.frames if (s := snapshot_of(frame)) is not None]
        return snapshots[-1]

    async def results_of(self, request_id: str, *, timeout: float = WAIT_TIMEOUT) -> list[Frame]:
        """Every Response payload / Error body for `request_id`, up to and including the terminal one."""
        index = await self.wait_for(lambda frame: is_terminal_for(frame, request_id), timeout=timeout)
        payloads = (payload_for(frame, request_id) for frame in self.frames[: index + 1])
        return [payload for payload in payloads if payload is not None]

    async def answer_to(self, request_id: str, *, timeout: float = WAIT_TIMEOUT) -> Frame:
        """The one Response payload (or Error body) for a request answered in one frame."""
        index = await self.wait_for(lambda frame: payload_for(frame, request_id) is not None, timeout=timeout)
        payload = payload_for(self.frames[index], request_id)
        assert payload is not None
        return payload


def snapshot_of(frame: Frame) -> Frame | None:
    notification = frame.get("Notification")
    if not isinstance(notification, dict):
        return None
    for kind in ("RegisterAgent", "UpdateAgentStatus"):
        if kind in notification:
            return notification[kind]["slot_aggregated_status_snapshot"]
    return None


def payload_for(frame: Frame, request_id: str) -> Frame | None:
    """`{"GeneratedToken": ...}`-like response payload, or `{"Error": {...}}`, for this request."""
    if "Response" in frame and frame["Response"]["request_id"] == request_id:
        return frame["Response"]["response"]
    if "Error" in frame and frame["Error"]["request_id"] == request_id:
        return {"Error": frame["Error"]["error"]}
    return None


def is_terminal_for(frame: Frame, request_id: str) -> bool:
    payload = payload_for(frame, request_id)
    if payload is None:
        return False
    if "Error" in payload:
        return True
    inner = payload.get("GeneratedToken", payload.get("Embedding"))
    if inner is None:
        return True  # metadata / template answers are single frames
    variant = inner if isinstance(inner, str) else next(iter(inner))
    return variant not in ("ContentToken", "ReasoningToken", "ToolCallToken", "UndeterminableToken", "Embedding")


class ScriptedFakeBalancer:
    def __init__(self, *, offer_reply_batching: bool = False, offer_status_extensions: bool = False) -> None:
        self.offer_reply_batching = offer_reply_batching
        self.offer_status_extensions = offer_status_extensions
        self.port = 0
        self.connections: list[AgentConnection] = []
        self._connected = trio.Event()

    async def serve(self, *, port: int = 0, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(trio_websocket.serve_websocket, self._handle, "127.0.0.1", port, None)
            self.port = server.port
            task_status.started()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def next_connection(self, *, after: int | None = None, timeout: float = WAIT_TIMEOUT) -> AgentConnection:
        """The first connection with index >= `after` (default: the next one not yet returned)."""
        wanted = len(self.connections) if after is None else after
        with trio.fail_after(timeout):
            while len(self.connections) <= wanted:
                await self._connected.wait()
        return self.connections[wanted]

    async def first_connection(self, *, timeout: float = WAIT_TIMEOUT) -> AgentConnection:
        return await self.next_connection(after=0, timeout=timeout)

    async def _handle(self, request: trio_websocket.WebSocketRequest) -> None:
        if not request.path.startswith(AGENT_SOCKET_PREFIX):
            await request.reject(404)
            return
        offer = [(REPLY_BATCHING_HEADER.encode(), REPLY_BATCHING_VERSION.encode())] if self.offer_reply_batching else []
        if self.offer_status_extensions:
            offer.append((STATUS_EXTENSIONS_HEADER.encode(), STATUS_EXTENSIONS_VERSION.encode()))
        socket = await request.accept(extra_headers=offer)
        connection = AgentConnection(request.path[len(AGENT_SOCKET_PREFIX) :], socket, request.headers)
        self.connections.append(connection)
        self._connected.set()
        self._connected = trio.Event()
        try:
            await connection.send({"Notification": {"Version": {"version": PADDLER_COMPATIBLE_VERSION}}})
            while True:
                frame = json.loads(await socket.get_message())
                messages = frame if isinstance(frame, list) else [frame]
                connection.frame_sizes.append(len(messages))
                for message in messages:
                    connection.record(message)
        except trio_websocket.ConnectionClosed:
            pass
        finally:
            connection.mark_closed()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]

