"""The balancer's view of one connected agent: its reported status, the balancer's own
count of requests dispatched to it, the queue of messages to send it, and the routes
that carry each in-flight request's replies back to the task serving it, and the prefixes it
is assumed to hold in its prompt cache (`prefix_affinity.py`).

An agent of the `llama_server` kind (`protocol.AgentKind`) watches a separately started
llama-server: it takes no desired state and no request over a link; the reverse proxy sends
requests to its llama-server directly (`proxy/reverse_proxy.py`). Clients may use that
llama-server directly too, so its busy slots are the larger of llama-server's own count and the
balancer's claims (`slots_busy`): a report that comes before llama-server has started a request
the balancer sent it does not erase the balancer's claim, and a claim is never counted twice.

A route may have a taker (`open_route(..., taker=...)`): the socket reader offers it each
reply first, and the reply goes into the route only when the taker declines it. The relay
uses this to hand tokens on to the client at once (`forwarding.py`).
"""

from __future__ import annotations

import enum
import logging
import posixpath
from collections.abc import Callable
from typing import Any

import attrs
import trio

from paddler_trio.protocol import (
    AgentControllerSnapshot,
    AgentKind,
    ChatTemplateDoesNotCompile,
    ErrorEnvelope,
    LegacyStatusStream,
    ResponseEnvelope,
    SlotAggregatedStatusSnapshot,
    TokenUsage,
    UnableToFindChatTemplate,
)
from paddler_trio.proxy.agent_wants import AgentWants
from paddler_trio.proxy.prefix_affinity import AgentPrefixes

_logger = logging.getLogger(__name__)

# What the agent socket reader hands to the task serving one request.
AgentReply = ResponseEnvelope[Any] | ErrorEnvelope


class Silence(enum.Enum):
    """The marker the forwarder's item-timeout watch puts in a route: the agent fell silent."""

    SILENCE = enum.auto()


SILENCE = Silence.SILENCE

# What a route carries.
RouteItem = AgentReply | Silence
# Offered each reply of a route before the route: True when it took the reply.
RouteTaker = Callable[[RouteItem], bool]

# Replies buffered per request before the request is declared too slow to follow.
ROUTE_CAPACITY = 4096

# Issues that stop an agent from serving. A missing or broken chat template does not:
# raw prompts still work, and conversation requests get a clear ChatTemplateError.
_NON_BLOCKING_ISSUES = (ChatTemplateDoesNotCompile, UnableToFindChatTemplate)


class RouteOverflow(Exception):
    """A request's consumer fell `ROUTE_CAPACITY` replies behind the agent."""


class DuplicateRoute(Exception):
    """A request id that is already in flight on this agent."""


@attrs.define(eq=False)
class AgentController:
    id: str
    name: str | None
    status: SlotAggregatedStatusSnapshot
    # Messages for the agent; the socket writer task drains the receive side.
    outbox: trio.MemorySendChannel[Any]
    # Whether the agent offered our request extensions when it connected (`protocol.request_extensions`);
    # a Paddler agent does not, and gets requests in Paddler's own shape.
    accepts_request_extensions: bool = False
    kind: AgentKind = AgentKind.ENGINE
    # Set for an unmodified Paddler 1.x or Rower agent (`management/legacy_status_stream.py`).
    legacy_status_stream: LegacyStatusStream | None = None
    # Slots claimed by this balancer's dispatch.
    slots_processing: int = 0
    # For a llama-server's count (`slots_busy`): status updates taken so far, claims taken since the
    # last one and still held, claims taken before it and released since.
    _status_generation: int = 0
    _claimed_since_status: int = 0
    _released_before_status: int = 0
    # Tokens relayed from this agent to clients (for `/metrics` and the dashboard's tokens/s).
    generated_tokens: int = 0
    # Prompt tokens of finished generations, as the agent's usage reports them (for `/metrics`).
    cached_prompt_tokens: int = 0
    prefilled_prompt_tokens: int = 0
    # What the cache-aware routing policy assumes the agent's prompt cache holds.
    prefixes: AgentPrefixes = attrs.field(factory=AgentPrefixes)
    # Set by `take_out_of_rotation`: a request on this agent hit the item timeout, or its
    # llama-server sent nothing back. Cleared by its next status update (see `update_status`), so
    # a frozen agent takes no new work until it answers again.
    unresponsive: bool = False
    _unresponsive_since_version: int = 0
    # Set when the agent refused a request because another balancer's took its last slot
    # (protocol/slot_race.py); cleared by its next status update, which counts the others' requests.
    every_slot_taken_elsewhere: bool = False
    connection_closed: trio.Event = attrs.field(factory=trio.Event)
    _routes: dict[str, trio.MemorySendChannel[RouteItem]] = attrs.field(factory=dict)
    _takers: dict[str, RouteTaker] = attrs.field(factory=dict)

    @property
    def slots_total(self) -> int:
        return self.status.slots_total

    @property
    def slots_busy(self) -> int:
        if self.kind is AgentKind.LLAMA_SERVER:
            reported_now = self.status.slots_processing - self._released_before_status + self._claimed_since_status
            return max(reported_now, self.slots_processing)
        return self.slots_processing

    def take_slot(self) -> int:
        """Count a claim; returns the status generation it was taken in (for `release_slot`)."""
        self.slots_processing += 1
        self._claimed_since_status += 1
        return self._status_generation

    def release_slot(self, taken_in_generation: int) -> None:
        self.slots_processing -= 1
        if taken_in_generation == self._status_generation:
            self._claimed_since_status -= 1
        else:
            self._released_before_status += 1

    @property
    def free_slots(self) -> int:
        return 0 if self.every_slot_taken_elsewhere else self.slots_total - self.slots_busy

    @property
    def prefix_capacity(self) -> int:
        """How many prompts the agent is assumed to keep cached: one per slot (its own slot count:
        `slots_total` is less while other balancers hold some), plus the states its prompt state
        cache holds, as its last status update reports them (our agents; 0 for others)."""
        slots = max(self.slots_total, self.status.desired_slots_total)
        return slots + (self.status.cache_states or 0)

    @property
    def accepts_work(self) -> bool:
        """Answering, with slots (a draining agent reports slots_total 0), and no blocking issue; an
        engine agent also has its model loaded (a llama-server agent reports slots only then)."""
        if self.unresponsive or self.connection_closed.is_set() or self.slots_total <= 0:
            return False
        if self.kind is AgentKind.ENGINE and self.status.model_path is None:
            return False
        return all(isinstance(issue, _NON_BLOCKING_ISSUES) for issue in self.status.issues)

    def serves(self, wants: AgentWants) -> bool:
        if self.id in wants.excluded_agents or (wants.model is not None and wants.model not in self.model_names):
            return False
        return self.kind is wants.kind and self.accepts_work

    @property
    def model_names(self) -> frozenset[str]:
        """What an OpenAI client may call a llama-server agent's model: llama-server's own name for
        it, and its GGUF file name. Engine agents serve the cluster's model: none of their own."""
        if self.kind is AgentKind.ENGINE or self.status.llama_server is None:
            return frozenset()
        names = {self.status.llama_server.model_name}
        if self.status.model_path:
            names.add(posixpath.basename(self.status.model_path.replace("\\", "/")))
        return frozenset(name for name in names if name)

    @property
    def busy_share(self) -> float:
        return self.slots_busy / self.slots_total if self.slots_total > 0 else 1.0

    def take_out_of_rotation(self) -> None:
        """No new work goes here until the agent shows it answers again (`update_status`)."""
        self.unresponsive = True
        self._unresponsive_since_version = self.status.version

    def update_status(self, status: SlotAggregatedStatusSnapshot) -> bool:
        """Take a newer snapshot; returns whether anything the pool cares about changed.

        An engine agent's own `slots_processing` is ignored: the balancer keeps its own count
        (a llama-server's is kept, see `slots_busy`). Any snapshot from an engine agent, even a
        stale one, proves it answers again. A llama-server agent's proves that its llama-server
        does only when it is newer than the one the balancer had when it took the agent out: the
        agent repeats its last report every second, and that may come from a poll before the failure.
        """
        revived = self.unresponsive and (
            self.kind is AgentKind.ENGINE or status.version > self._unresponsive_since_version
        )
        if revived:
            self.unresponsive = False
        if status.version < self.status.version:
            return revived
        # Bringing llama-server's count up to date starts again from this report: its busy slots may change.
        recounted = self.kind is AgentKind.LLAMA_SERVER and bool(self._claimed_since_status or self._released_before_status)
        self._status_generation += 1
        self._claimed_since_status = self._released_before_status = 0
        if (status.model_path, status.state_application_status) != (self.status.model_path, self.status.state_application_status):
            # A model (re)load rebuilds the agent's context (the agent reports the state it applies
            # as not yet applied meanwhile): its cache is gone. Not `slots_total`: an agent serving
            # several balancers reports fewer slots while the others' requests hold some.
            self.prefixes.clear()
        if self.every_slot_taken_elsewhere:
            self.every_slot_taken_elsewhere = False
            revived = True  # its slots count for the pool again
        if self.kind is AgentKind.LLAMA_SERVER:
            changed = attrs.evolve(status, version=0) != attrs.evolve(self.status, version=0)
        else:
            changed = attrs.evolve(status, version=0, slots_processing=0) != attrs.evolve(
                self.status, version=0, slots_processing=0
            )
        self.status = status
        return changed or revived or recounted

    def count_prompt_tokens(self, usage: TokenUsage) -> None:
        cached = min(usage.cached_prompt_tokens, usage.prompt_tokens)
        self.cached_prompt_tokens += cached
        self.prefilled_prompt_tokens += usage.prompt_tokens - cached

    def snapshot(self) -> AgentControllerSnapshot:
        status = self.status
        return AgentControllerSnapshot(
            desired_slots_total=status.desired_slots_total,
            download_current=status.download_current,
            download_filename=status.download_filename,
            download_indeterminate=status.download_indeterminate,
            download_total=status.download_total,
            id=self.id,
            issues=status.issues,
            model_path=status.model_path,
            name=self.name,
            slots_processing=self.slots_busy,
            slots_total=status.slots_total,
            state_application_status=status.state_application_status,
            uses_chat_template_override=status.uses_chat_template_override,
            cache_states=status.cache_states,
            cache_used_bytes=status.cache_used_bytes,
            cache_limit_bytes=status.cache_limit_bytes,
            multimodal_projection_path=status.multimodal_projection_path,
            kind=self.kind,
            llama_server=status.llama_server,
            legacy_status_stream=self.legacy_status_stream,
        )

    # --- per-request reply routes ------------------------------------------------------

    def open_route(self, request_id: str, taker: RouteTaker | None = None) -> trio.MemoryReceiveChannel[RouteItem]:
        if request_id in self._routes:
            raise DuplicateRoute(request_id)
        send, receive = trio.open_memory_channel[RouteItem](ROUTE_CAPACITY)
        self._routes[request_id] = send
        if taker is not None:
            self._takers[request_id] = taker
        return receive

    def close_route(self, request_id: str) -> None:
        self._takers.pop(request_id, None)
        send = self._routes.pop(request_id, None)
        if send is not None:
            send.close()

    def deliver(self, request_id: str, reply: RouteItem) -> None:
        """Hand a reply to its request (its taker, else its route) without ever blocking the socket reader."""
        taker = self._takers.get(request_id)
        if taker is not None and taker(reply):
            return
        send = self._routes.get(request_id)
        if send is None:
            return  # the request already ended (cancelled, timed out): late replies are dropped
        try:
            send.send_nowait(reply)
        except trio.WouldBlock:
            _logger.warning("request %s on agent %s fell %d replies behind: ending it", request_id, self.id, ROUTE_CAPACITY)
            self.close_route(request_id)
        except trio.BrokenResourceError:
            self.close_route(request_id)

    def close_all_routes(self) -> None:
        for request_id in list(self._routes):
            self.close_route(request_id)

    @property
    def in_flight_request_ids(self) -> list[str]:
        return list(self._routes)
