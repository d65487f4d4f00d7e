"""One request's journey through the balancer: buffer, dispatch, and the relay of the
agent's replies to the client (spec 6.3, 2.5, 2.8).

Every outcome reaches the client as a message through `emit`: the agent's replies (with
`generated_by` set to the agent's name and the client's request id), or one of the
spec's error envelopes. The agent sees a fresh balancer-made id per dispatch, so ids
chosen by different WebSocket clients can never collide on one agent, and late replies
of an abandoned dispatch can never mix into a re-dispatched one.

When the client leaves (its task is cancelled, or `emit` finds it gone) or the agent
falls silent for `--inference-item-timeout`, the request is handed to a drain task
owned by the forwarder (`RequestForwarder.run`): it tells the agent `StopRespondingTo`, waits
for the agent's terminal message (at most another item timeout), and only then releases the
slot. The drain outlives the request on purpose: the client is gone, but the slot stays the
balancer's until the agent confirms, and the client's connection is not held meanwhile.

The item timeout costs nothing per reply: instead of a timer around every wait, a relay
notes when it starts waiting, and one watch task per forwarder drops a `SILENCE` marker into
the route of any relay that has waited too long.

Tokens at once: a client's writer takes messages from a queue (`EmitNow` puts one there without
waiting). While a relay waits with nothing queued in its route, the agent socket's reader puts
each token into that queue itself (`_Relay.take`), so that only the client's writer wakes for
it, not the relay too. Everything else (the first reply that finds the relay busy, terminal
replies, errors, silence, a fast stream being gathered) goes through the route as before, and
replies taken at once count for the item timeout, the token counter and re-dispatch exactly as
relayed ones do. Both paths end in the same queue, so a token never overtakes another.

An agent that did not offer our request extensions (a Paddler agent) gets each request in
Paddler's own shape (`protocol.request_extensions`); a request that needs an extension it
cannot take ends with a 400 envelope naming the fields, instead of a request the agent would
drop without an answer.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from paddler_trio.protocol import (
    AgentRequest,
    ContentToken,
    ErrorDetails,
    ErrorEnvelope,
    GenerationDone,
    InferenceClientBoundMessage,
    ReasoningToken,
    RequestEnvelope,
    ResponseEnvelope,
    StopRespondingToNotification,
    ToolCallToken,
    UndeterminableToken,
    is_terminal,
)
from paddler_trio.protocol.request_extensions import InexpressibleFields, paddler_shaped
from paddler_trio.protocol.slot_race import is_slots_taken
from paddler_trio.proxy.agent_controller import (
    SILENCE,
    AgentController,
    AgentReply,
    RouteItem,
)
from paddler_trio.proxy.agent_pool import SlotClaim
from paddler_trio.proxy.buffer import BufferOverflow, BufferTimeout, RequestBuffer
from paddler_trio.proxy.prefix_chain import NO_PREFIX, prefix_chain
from paddler_trio.proxy.request_id import new_request_id
from paddler_trio.proxy.shutdown_signal import ShutdownSignal

_logger = logging.getLogger(__name__)

Emit = Callable[[InferenceClientBoundMessage], Awaitable[None]]
# Hands a message to the client's writer without waiting, after everything emitted before it;
# False when it cannot (the writer's queue is full or closed): it must then go through `Emit`.
EmitNow = Callable[[InferenceClientBoundMessage], bool]

# What `emit` raises when the client cannot take more messages (its stream or socket is gone).
CLIENT_GONE_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError)

_GENERATED_TOKENS = (ContentToken, ReasoningToken, ToolCallToken, UndeterminableToken)


def error_envelope(request_id: str, code: int, description: str) -> ErrorEnvelope:
    return ErrorEnvelope(request_id=request_id, error=ErrorDetails(code=code, description=description))


async def emit_all_into(
    send: trio.MemorySendChannel[InferenceClientBoundMessage], request_id: str, work: Callable[[], Awaitable[None]]
) -> None:
    """Run `work`, which emits a request's messages into `send`, then close `send`. A failure of
    `work` reaches the client as the 500 envelope; a client that is gone ends it quietly."""
    async with send:
        try:
            await work()
        except CLIENT_GONE_ERRORS:
            pass
        except Exception:
            _logger.exception("request %s failed", request_id)
            with contextlib.suppress(*CLIENT_GONE_ERRORS):
                await send.send(error_envelope(request_id, 500, "Internal server error"))


def item_timeout_description(item_timeout: float) -> str:
    return (
        f"Inference timed out after {round(item_timeout * 1000)}ms waiting for next token. "
        "Increase --inference-item-timeout if the prompt requires longer processing."
    )


def paddler_agent_refusal_description(agent: AgentController, fields: tuple[str, ...]) -> str:
    named = f"{agent.name} (id {agent.id})" if agent.name else agent.id
    return (
        f"Agent {named} is a Paddler agent, which does not accept these request fields: {', '.join(fields)}. "
        "Send the request without them."
    )


def ends_stream(reply: AgentReply) -> bool:
    return isinstance(reply, ErrorEnvelope) or is_terminal(reply.response)


class _Outcome(enum.Enum):
    FINISHED = enum.auto()
    AGENT_LOST_BEFORE_OUTPUT = enum.auto()
    # The agent serves several balancers and another's request took the slot (protocol/slot_race.py).
    SLOT_TAKEN_ELSEWHERE = enum.auto()


@attrs.define(eq=False)
class _Relay:
    """One dispatch being relayed; `waiting_since` is set while it waits for the agent's next
    reply with nothing queued in its route."""

    agent: AgentController
    agent_request_id: str
    request_id: str
    emit_now: EmitNow | None = None
    gather: float = 0.0
    waiting_since: float | None = None
    produced_output: bool = False
    # The agent ended the generation normally (its KV, and so the prompt's prefix, stays cached).
    completed: bool = False
    previous_reply_at: float = -math.inf
    # Set while the relay gathers a fast stream's replies (`gather_replies`).
    gathering: trio.Event | None = None

    def to_client(self, reply: ResponseEnvelope[Any]) -> ResponseEnvelope[Any]:
        return ResponseEnvelope(generated_by=self.agent.name, request_id=self.request_id, response=reply.response)

    def count(self, reply: ResponseEnvelope[Any]) -> None:
        """Note `reply` as passed on to the client."""
        self.produced_output = True
        if isinstance(reply.response, _GENERATED_TOKENS):
            self.agent.generated_tokens += 1
        elif isinstance(reply.response, GenerationDone):
            self.completed = True
            self.agent.count_prompt_tokens(reply.response.usage)

    def take(self, reply: RouteItem) -> bool:
        """The route's taker (called by the agent socket's reader): hand a token on at once when
        the relay waits with nothing queued and the stream is not being gathered. Any other reply
        goes into the route, and from then on every reply does until the relay waits again; one
        that is not a token ends a gathering."""
        is_token = type(reply) is ResponseEnvelope and isinstance(reply.response, _GENERATED_TOKENS)
        if self.waiting_since is None or self.emit_now is None:
            if self.gathering is not None and not is_token:
                self.gathering.set()
            return False
        if is_token:
            now = trio.current_time()
            if now - self.previous_reply_at >= self.gather and self.emit_now(self.to_client(reply)):
                self.count(reply)
                self.previous_reply_at = now
                self.waiting_since = now
                return True
        self.waiting_since = None
        return False

    def stop_taking(self) -> None:
        self.emit_now = None

    async def gather_replies(self) -> None:
        """Let the replies of the next `gather` seconds queue in the route, to go on together;
        a reply that is not a token (the stream's end, an error) stops the wait when it arrives,
        so that the end of a stream, and the slot it frees, is never held back."""
        self.gathering = trio.Event()
        try:
            with trio.move_on_after(self.gather):
                await self.gathering.wait()
        finally:
            self.gathering = None


class _SilenceWatch:
    """Ends the wait of every relay whose agent stays silent for the item timeout.

    It sleeps until the earliest moment a waiting relay can reach the timeout (a relay that
    starts waiting later reaches it later still), so a busy balancer wakes for it about once
    per timeout, not once per token; with no relay registered it waits for one, so an idle
    balancer has no timer at all.
    """

    def __init__(self, item_timeout: float) -> None:
        self._item_timeout = item_timeout
        self._relays: set[_Relay] = set()
        self._relay_added = trio.Event()

    def add(self, relay: _Relay) -> None:
        self._relays.add(relay)
        self._relay_added.set()

    def discard(self, relay: _Relay) -> None:
        self._relays.discard(relay)

    async def run(self) -> None:
        while True:
            if not self._relays:
                self._relay_added = trio.Event()
                await self._relay_added.wait()
            now = trio.current_time()
            next_check = now + self._item_timeout
            for relay in list(self._relays):
                if relay.waiting_since is None:
                    continue
                timeout_at = relay.waiting_since + self._item_timeout
                if timeout_at <= now:
                    relay.waiting_since = None  # one marker per silence
                    relay.agent.deliver(relay.agent_request_id, SILENCE)
                else:
                    next_check = min(next_check, timeout_at)
            # At least a millisecond: with `--inference-item-timeout 0` the loop would spin.
            await trio.sleep_until(max(next_check, now + 0.001))


# How long a request whose agent left before answering waits for any agent to be registered
# before it ends with a 502, as in Paddler, rather than with the buffer's 504: longer than an
# agent's reconnect (1 s, plus its handshake on a loaded host), so that a link that drops and
# comes back, or a replacement that starts at once, still serves it.
AGENT_REJOIN_GRACE = 5.0


class RequestForwarder:
    """Serves requests for the inference routes; one per balancer, started with `run`."""

    def __init__(self, *, buffer: RequestBuffer, shutdown: ShutdownSignal, item_timeout: float) -> None:
        self._buffer = buffer
        self._shutdown = shutdown
        self._item_timeout = item_timeout
        self._silence = _SilenceWatch(item_timeout)
        # Open while `run` runs: where the drains of requests whose client left are started.
        self._drains: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The forwarder's own tasks, for as long as it serves: the item-timeout watch and the
        slot drains. Once it has stopped, a request whose client leaves releases its slot at once."""
        async with trio.open_nursery() as drains:
            drains.start_soon(self._silence.run)
            self._drains = drains
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                # Here, while this body still runs, the nursery takes new tasks (cancelled at once):
                # once the body has ended it may close before the task that waits in it resumes.
                self._drains = None

    async def serve(
        self,
        request_id: str,
        request: AgentRequest,
        emit: Emit,
        *,
        gather: float = 0.0,
        emit_now: EmitNow | None = None,
    ) -> None:
        """Relay one request's replies to `emit` until its stream ends; with `emit_now`, tokens go
        on from the agent socket's reader whenever they can (see the module docstring).

        With `gather` (seconds): once a reply has followed the previous one that closely (the
        stream is fast), the relay waits out the interval after handing it on, and the replies
        that arrive meanwhile go on together: with an emit that waits only for a full consumer
        (`queued_messages.put_into`), they reach the client's writer together, which sends them in one write.
        Every reply of a stream slower than the interval, the first reply, and any after a quiet
        interval go at once, with no timer (a timer per token would wake the balancer twice per
        token, which costs the engine's neighbours on a busy machine).

        Returns normally for every outcome the client is told about; a client that is gone
        ends it quietly. Cancellation (the client left) propagates after the hand-off to a drain.
        Once the balancer drains for its shutdown, a new request gets the 503 envelope at once.
        """
        try:
            if self._shutdown.draining:
                await emit(error_envelope(request_id, 503, "balancer is shutting down"))
                return
            with self._shutdown.in_flight(), self._shutdown.cancel_scope() as shutdown_scope:
                await self._serve(request_id, request, emit, gather, emit_now)
            if shutdown_scope.cancelled_caught:
                await emit(error_envelope(request_id, 503, "balancer is shutting down"))
        except CLIENT_GONE_ERRORS:
            _logger.debug("client of request %s is gone", request_id)

    async def _serve(
        self, request_id: str, request: AgentRequest, emit: Emit, gather: float, emit_now: EmitNow | None
    ) -> None:
        redispatched = False
        prefix = prefix_chain(request) if self._buffer.routes_by_prefix else NO_PREFIX
        while True:
            try:
                claim = await self._buffer.claim(prefix)
            except BufferOverflow:
                _logger.warning("too many buffered requests, refusing request %s", request_id)
                await emit(error_envelope(request_id, 503, "Buffered requests overflow"))
                return
            except BufferTimeout:
                _logger.warning("request %s timed out waiting for a free slot", request_id)
                await emit(error_envelope(request_id, 504, "Waiting for available slot timed out"))
                return
            relay = _Relay(claim.agent, new_request_id(), request_id, emit_now=emit_now, gather=gather)
            outcome = await self._forward(claim, relay, request, emit)
            if outcome is _Outcome.FINISHED:
                return
            if outcome is _Outcome.SLOT_TAKEN_ELSEWHERE:
                _logger.info(
                    "agent %s had no free slot for request %s (another balancer took it): dispatching it again",
                    claim.agent.id,
                    request_id,
                )
                continue
            if redispatched or not await self._buffer.wait_for_an_agent(AGENT_REJOIN_GRACE):
                await emit(error_envelope(request_id, 502, "Agent controller connection closed"))
                return
            _logger.info("agent %s left before answering request %s: dispatching it again", claim.agent.id, request_id)
            redispatched = True

    async def _forward(self, claim: SlotClaim, relay: _Relay, request: AgentRequest, emit: Emit) -> _Outcome:
        agent, agent_request_id, request_id = relay.agent, relay.agent_request_id, relay.request_id
        if agent.connection_closed.is_set():
            # The agent left between handing out this slot and this task running again.
            claim.release()
            return _Outcome.AGENT_LOST_BEFORE_OUTPUT
        if not agent.accepts_request_extensions:
            shaped = paddler_shaped(request)
            if isinstance(shaped, InexpressibleFields):
                claim.release()
                _logger.warning(
                    "request %s sets %s, which Paddler agent %s does not accept: refused",
                    request_id,
                    ", ".join(shaped.fields),
                    agent.id,
                )
                await emit(error_envelope(request_id, 400, paddler_agent_refusal_description(agent, shaped.fields)))
                return _Outcome.FINISHED
            request = shaped
        route = agent.open_route(agent_request_id, relay.take)
        self._silence.add(relay)
        settled = False  # the agent owes us nothing more: release at once instead of draining
        try:
            try:
                agent.outbox.send_nowait(RequestEnvelope(id=agent_request_id, request=request))
            except (trio.WouldBlock, *CLIENT_GONE_ERRORS):
                _logger.error("could not send request %s to agent %s", request_id, agent.id)
                settled = True
                await emit(error_envelope(request_id, 500, "Failed to generate response"))
                return _Outcome.FINISHED
            while True:
                try:
                    reply = await _next_reply(route, relay)
                except trio.EndOfChannel:
                    settled = True
                    if agent.connection_closed.is_set():
                        if not relay.produced_output:
                            return _Outcome.AGENT_LOST_BEFORE_OUTPUT
                        await emit(error_envelope(request_id, 502, "Agent controller connection closed"))
                    else:
                        await emit(error_envelope(request_id, 502, "Response channel closed before terminator"))
                    return _Outcome.FINISHED
                if reply is SILENCE:
                    agent.take_out_of_rotation()
                    _logger.warning(
                        "request %s: agent %s sent nothing for %.0f ms (--inference-item-timeout)",
                        request_id,
                        agent.id,
                        self._item_timeout * 1000,
                    )
                    await emit(error_envelope(request_id, 504, item_timeout_description(self._item_timeout)))
                    return _Outcome.FINISHED
                if isinstance(reply, ErrorEnvelope):
                    settled = True
                    if is_slots_taken(reply.error) and not relay.produced_output:
                        agent.every_slot_taken_elsewhere = True
                        return _Outcome.SLOT_TAKEN_ELSEWHERE
                    await emit(error_envelope(request_id, reply.error.code, reply.error.description))
                    return _Outcome.FINISHED
                if ends_stream(reply):
                    settled = True
                reply_at = trio.current_time()
                relay.count(reply)
                await emit(relay.to_client(reply))
                if settled:
                    return _Outcome.FINISHED
                stream_is_fast = reply_at - relay.previous_reply_at < relay.gather
                relay.previous_reply_at = reply_at
                if stream_is_fast and not route.statistics().current_buffer_used:
                    # Replies that come meanwhile wait in the route and go on together; nothing is
                    # held outside the route, so a client leaving now loses no terminal reply.
                    await relay.gather_replies()
        finally:
            relay.stop_taking()
            self._silence.discard(relay)
            if not relay.completed:
                claim.forget_prefix()
            if settled:
                agent.close_route(agent_request_id)
                claim.release()
            else:
                self._drain(agent, agent_request_id, route, claim)

    def _drain(
        self,
        agent: AgentController,
        agent_request_id: str,
        route: trio.MemoryReceiveChannel[RouteItem],
        claim: SlotClaim,
    ) -> None:
        if self._drains is None:  # the forwarder has stopped: nothing is left to wait for
            agent.close_route(agent_request_id)
            claim.release()
            return
        self._drains.start_soon(self._drain_task, agent, agent_request_id, route, claim)

    async def _drain_task(
        self,
        agent: AgentController,
        agent_request_id: str,
        route: trio.MemoryReceiveChannel[RouteItem],
        claim: SlotClaim,
    ) -> None:
        try:
            try:
                agent.outbox.send_nowait(StopRespondingToNotification(agent_request_id))
            except (trio.WouldBlock, *CLIENT_GONE_ERRORS):
                return
            with trio.move_on_after(self._item_timeout):
                async for reply in route:
                    if reply is not SILENCE and ends_stream(reply):
                        return
        finally:
            agent.close_route(agent_request_id)
            claim.release()


async def _next_reply(route: trio.MemoryReceiveChannel[RouteItem], relay: _Relay) -> RouteItem:
    """The next reply, or `SILENCE` when the agent said nothing for the item timeout.

    A reply already queued is taken without a checkpoint (a `SILENCE` found that way is
    stale: a reply overtook it, so it is skipped).
    """
    while True:
        try:
            reply = route.receive_nowait()
        except trio.WouldBlock:
            break
        if reply is not SILENCE:
            return reply
    relay.waiting_since = trio.current_time()
    try:
        return await route.receive()
    finally:
        relay.waiting_since = None
