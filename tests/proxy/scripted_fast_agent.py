"""A scripted fast agent for the balancer's forwarding benchmark (and load tests): it speaks
the agent socket protocol like a real agent but answers every generation request with
`tokens` ContentTokens then `Done`, as fast as the socket takes them.

Never a stand-in for llama.cpp in a feature test. What makes it fast: each request's token
message is serialised once and frames are written straight to the TCP stream, so the agent
spends almost no CPU per token and the balancer is what the benchmark measures.
`StopRespondingTo` ends the stream with `Done`.

When the balancer offers reply batching (`paddler_trio.protocol.reply_batching`) and
`batching` is on, it behaves like a real agent's engine: each step sends one frame holding
one token of every request in flight (up to `MAX_MESSAGES_PER_FRAME`), and with
`step_interval` it waits that long before each step, like an engine decoding on the CPU. Otherwise it sends
one message per frame, as Paddler's agents do, `FRAMES_PER_WRITE` frames per write.

Run it as a process: `python -m tests.proxy.scripted_fast_agent --management-addr HOST:PORT`.
"""

from __future__ import annotations

import argparse
import secrets
from typing import Any

import attrs
import trio
import wsproto.events
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from paddler_trio.protocol import (
    AgentBoundMessage,
    ContentToken,
    ContinueFromConversationHistoryParams,
    ContinueFromRawPromptParams,
    GenerationDone,
    RegisterAgentNotification,
    RequestEnvelope,
    ResponseEnvelope,
    StopRespondingToNotification,
    TokenUsage,
    VersionNotification,
    from_json,
    to_json,
)
from paddler_trio.protocol.reply_batching import (
    MAX_MESSAGES_PER_FRAME,
    batch_frame,
    offers_reply_batching,
)
from tests.proxy.scripted_fake_agent import status_snapshot

FRAMES_PER_WRITE = 64


@attrs.define(eq=False)
class ScriptedFastAgent:
    management_addr: str
    slots: int = 64
    tokens: int = 2000
    token_text: str = "tok"
    name: str | None = "scripted-fast"
    agent_id: str = attrs.field(factory=lambda: "fast-" + secrets.token_hex(4))
    batching: bool = True
    step_interval: float = 0.0
    _ws: WebSocketConnection | None = None
    _stopped: set[str] = attrs.field(factory=set)
    # Batching mode: each request in flight with its token message and the tokens still to send.
    _in_flight: dict[str, list[Any]] = attrs.field(factory=dict)
    _step_wanted: trio.Event = attrs.field(factory=trio.Event)

    @property
    def url(self) -> str:
        return f"ws://{self.management_addr}/api/v1/agent_socket/{self.agent_id}"

    async def run(self, *, task_status: trio.TaskStatus[ScriptedFastAgent] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, register, then serve until the balancer closes the connection."""
        try:
            async with open_websocket_url(self.url, max_message_size=64 * 2**20) as ws:
                self._ws = ws
                version = from_json(await ws.get_message(), AgentBoundMessage)
                assert isinstance(version, VersionNotification), version
                snapshot = status_snapshot(slots=self.slots, model_path="/models/scripted-fast.gguf")
                await ws.send_message(
                    to_json(RegisterAgentNotification(name=self.name, slot_aggregated_status_snapshot=snapshot))
                )
                batching = self.batching and offers_reply_batching(ws.handshake_headers)
                async with trio.open_nursery() as nursery:
                    if batching:
                        nursery.start_soon(self._step_forever)
                    task_status.started(self)
                    while True:
                        message = from_json(await ws.get_message(), AgentBoundMessage)
                        if isinstance(message, StopRespondingToNotification):
                            self._stopped.add(message.request_id)
                        elif isinstance(message, RequestEnvelope) and isinstance(
                            message.request, (ContinueFromRawPromptParams, ContinueFromConversationHistoryParams)
                        ):
                            if batching:
                                self._in_flight[message.id] = [token_message(message.id, self.token_text), self.tokens]
                                self._step_wanted.set()
                            else:
                                nursery.start_soon(self._generate, message.id)
        except* (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _generate(self, request_id: str) -> None:
        assert self._ws is not None
        frame = self._encode(token_message(request_id, self.token_text))
        sent = 0
        while sent < self.tokens and request_id not in self._stopped:
            count = min(FRAMES_PER_WRITE, self.tokens - sent)
            await self._write(frame * count)
            sent += count
        self._stopped.discard(request_id)
        await self._ws.send_message(done_message(request_id, sent))

    async def _step_forever(self) -> None:
        """Batching mode: one frame per step, one token of every request in flight."""
        while True:
            if not self._in_flight:
                await self._step_wanted.wait()
                self._step_wanted = trio.Event()
                continue
            texts: list[str] = []
            for request_id, entry in list(self._in_flight.items())[:MAX_MESSAGES_PER_FRAME]:
                message, remaining = entry
                if remaining == 0 or request_id in self._stopped:
                    del self._in_flight[request_id]
                    self._stopped.discard(request_id)
                    texts.append(done_message(request_id, self.tokens - remaining))
                else:
                    texts.append(message)
                    entry[1] = remaining - 1
            if self.step_interval:
                await trio.sleep(self.step_interval)
            await self._write(self._encode(batch_frame(texts)))

    def _encode(self, text: str) -> bytes:
        assert self._ws is not None
        # A complete text message leaves wsproto's state untouched; only the bytes are kept.
        return self._ws._wsproto.send(wsproto.events.TextMessage(data=text))  # noqa: SLF001

    async def _write(self, data: bytes) -> None:
        assert self._ws is not None
        # The connection's own lock keeps these writes whole between trio-websocket's frames.
        async with self._ws._stream_lock:  # noqa: SLF001
            await self._ws._stream.send_all(data)  # noqa: SLF001


def token_message(request_id: str, text: str) -> str:
    return to_json(ResponseEnvelope(generated_by=None, request_id=request_id, response=ContentToken(text)))


def done_message(request_id: str, content_tokens: int) -> str:
    usage = TokenUsage(prompt_tokens=1, content_tokens=content_tokens)
    return to_json(ResponseEnvelope(generated_by=None, request_id=request_id, response=GenerationDone(usage=usage)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A scripted fast agent: ContentTokens as fast as the balancer takes them")
    parser.add_argument("--management-addr", required=True, help="balancer management HOST:PORT")
    parser.add_argument("--slots", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=2000, help="ContentTokens per request before Done")
    parser.add_argument("--name", default="scripted-fast")
    parser.add_argument(
        "--batching", action=argparse.BooleanOptionalAction, default=True,
        help="one frame per step for all requests in flight when the balancer offers it (our agents' way)",
    )
    parser.add_argument("--step-interval", type=float, default=0.0, help="seconds before each step's frame (batching)")
    args = parser.parse_args(argv)
    agent = ScriptedFastAgent(
        args.management_addr,
        slots=args.slots,
        tokens=args.tokens,
        name=args.name,
        batching=args.batching,
        step_interval=args.step_interval,
    )
    trio.run(agent.run)


if __name__ == "__main__":
    main()

