"""Unmodified Paddler 1.x and Rower agents on the management port (spec "paddler-1x-llama-server-mode", 2.4, 3.2, 5).

Such an agent watches a llama-server and reports on it over one long HTTP/1.1 request:
`POST /status_update/{agent_id}` (Paddler 1.0-1.2) or `POST /api/v1/agent_status_update/{agent_id}`
(Paddler's main branch before 2.0, Rower), whose chunked body is a stream of JSON objects, one
status update each, with no delimiter (`legacy_status_update.py` reads both formats, whichever
path they come on). The agent joins the pool, as the `llama_server` kind, with its first valid
update, and leaves when the request ends, for whatever reason; a clean end gets 202 with an empty
body (agents ignore the answer and reconnect a second later, with the same id).

Served from the port's ASGI interface ahead of Quart, like the agents' socket: Quart reads a
request body whole and limits its size and time, while this body has no end and may stay silent
for a whole monitoring interval (Paddler 1.2 agents: `--monitoring-interval` seconds).

Liveness: a stream silent for `SILENCE_LIMIT` ends (408), and its agent leaves. Without a bound, a
half-open connection (the agent's machine gone, a network cut) would keep a ghost agent listed
forever, as nothing is ever sent on it that could fail. An agent that reports about once a
monitoring interval never comes near it (Paddler 1.x's default is 10 s, and the spec's slowest
example 60 s); a live one that was slower reconnects at once, with the same id.

Fixes of that era's bugs (spec 6): objects are split by their own braces, not by HTTP chunks (an
intermediary may split or merge chunks); a second stream with the same agent id replaces the
first, whose connection may be half-open and would otherwise keep a dead entry forever; with
`--agent-secret` these routes take the secret like the agents' socket (`Authorization: Bearer`),
which unmodified agents cannot send, so they are refused (and the refusal logged) instead of
letting anyone who reaches the port register an address.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

import attrs
import trio
from quart_trio import QuartTrio

from paddler_trio.management.legacy_status_update import InvalidStatusUpdate, LegacyStatusUpdate, read_status_update
from paddler_trio.protocol import AgentKind
from paddler_trio.proxy.agent_controller import AgentController
from paddler_trio.proxy.agent_pool import AgentPool
from paddler_trio.proxy.shutdown_signal import ShutdownSignal
from paddler_trio.security.api_keys import ApiKeys, refusal_of_request
from paddler_trio.security.error_shapes import native_error_body
from paddler_trio.security.refusal_log import RefusalLog

_logger = logging.getLogger(__name__)

AsgiReceive = Callable[[], Any]
AsgiSend = Callable[[dict[str, Any]], Any]

# Paddler 1.0-1.2, then its main branch before 2.0 and Rower.
_PATHS = re.compile(r"^/(?:status_update|api/v1/agent_status_update)/([^/]+)$")
# A status update is a few hundred bytes; anything this large is not one.
MAX_OBJECT_BYTES = 1024 * 1024
# Seconds a stream may stay silent before it ends: twelve of Paddler 1.x's default monitoring
# intervals, twice the slowest the spec mentions (docs/llama_server_agents.md).
SILENCE_LIMIT = 120.0


class InvalidStream(ValueError):
    """The body is not a stream of JSON objects."""


class ConcatenatedJsonObjects:
    """Splits a byte stream into JSON objects written one after the other, with or without
    whitespace between them, however the bytes are cut into pieces."""

    def __init__(self, max_object_bytes: int = MAX_OBJECT_BYTES) -> None:
        self._max_object_bytes = max_object_bytes
        self._pending = bytearray()
        self._scanned = 0  # bytes of `_pending` already scanned
        self._depth = 0
        self._in_string = False
        self._escaped = False

    def feed(self, data: bytes) -> list[Any]:
        """The objects completed by `data`; raises `InvalidStream`."""
        self._pending += data
        objects: list[Any] = []
        pending = self._pending
        start = 0
        index = self._scanned
        while index < len(pending):
            byte = pending[index]
            index += 1
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif byte == 0x5C:  # backslash
                    self._escaped = True
                elif byte == 0x22:  # quote
                    self._in_string = False
            elif self._depth == 0:
                if byte == 0x7B:  # {
                    self._depth = 1
                elif byte in b" \t\r\n":
                    start = index
                else:
                    raise InvalidStream(f"expected a JSON object, found {bytes([byte])!r}")
            elif byte == 0x22:
                self._in_string = True
            elif byte in b"{[":
                self._depth += 1
            elif byte in b"}]":
                self._depth -= 1
                if self._depth == 0:
                    try:
                        objects.append(json.loads(bytes(pending[start:index])))
                    except ValueError as error:
                        raise InvalidStream(f"invalid JSON: {error}") from None
                    start = index
        del pending[:start]
        self._scanned = len(pending)
        if len(pending) > self._max_object_bytes:
            raise InvalidStream(f"a JSON object longer than {self._max_object_bytes} bytes")
        return objects


@attrs.define
class _Stream:
    agent_id: str
    path: str
    objects: ConcatenatedJsonObjects = attrs.field(factory=ConcatenatedJsonObjects)
    agent: AgentController | None = None
    version: int = 0


class _Refused(Exception):
    def __init__(self, status: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.description = description


class LegacyStatusStreams:
    def __init__(self, pool: AgentPool, shutdown: ShutdownSignal, keys: ApiKeys) -> None:
        self._pool = pool
        self._shutdown = shutdown
        self._keys = keys
        self._refusals = RefusalLog(_logger)

    def wrap(self, app: QuartTrio) -> QuartTrio:
        """Serve the status streams ahead of `app`; every other request goes on to it."""
        asgi_app = app.asgi_app

        async def serve(scope: dict[str, Any], receive: AsgiReceive, send: AsgiSend) -> None:
            match = _PATHS.match(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
            if match is None:
                await asgi_app(scope, receive, send)
                return
            await self.serve(scope, receive, send, match.group(1))

        app.asgi_app = serve  # type: ignore[method-assign]
        return app

    async def serve(self, scope: dict[str, Any], receive: AsgiReceive, send: AsgiSend, agent_id: str) -> None:
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        refusal = refusal_of_request(self._keys, headers.get("authorization"))
        if refusal is not None:
            client = (scope.get("client") or ("unknown client",))[0]
            self._refusals.refused(
                client,
                refusal.reason,
                "management service refused the status stream %s: %s (unmodified Paddler 1.x and Rower agents cannot "
                "send the balancer's --agent-secret)",
                scope["path"],
                refusal.reason,
            )
            await _answer(send, 401, native_error_body(refusal.description), json_body=True)
            return
        try:
            await self._follow(receive, agent_id, scope["path"])
        except _Refused as refused:
            await _answer(send, refused.status, refused.description)
            return
        await _answer(send, 202, "")

    async def _follow(self, receive: AsgiReceive, agent_id: str, path: str) -> None:
        """Apply the stream's updates until it ends, is replaced, or the balancer shuts down;
        raises `_Refused` for a stream that cannot go on."""
        stream = _Stream(agent_id, path)
        refused: _Refused | None = None
        try:
            with self._shutdown.cancel_scope():
                async with trio.open_nursery() as watch:
                    try:
                        await self._read(receive, stream, watch)
                    except _Refused as error:
                        refused = error
                    watch.cancel_scope.cancel()
        finally:
            if stream.agent is not None:
                replaced = self._pool.get(agent_id) not in (stream.agent, None)
                self._pool.deregister(stream.agent)
                _logger.info("agent %s left (%s)", agent_id, "replaced by a new status stream" if replaced else "stream ended")
        if refused is not None:
            raise refused

    async def _read(self, receive: AsgiReceive, stream: _Stream, watch: trio.Nursery) -> None:
        while True:
            message = None
            with trio.move_on_after(SILENCE_LIMIT):
                message = await receive()
            if message is None:
                _logger.warning("agent %s sent nothing for %g s: its stream is taken for dead", stream.agent_id, SILENCE_LIMIT)
                raise _Refused(408, f"No status update for {SILENCE_LIMIT:g} s")
            if message["type"] != "http.request":  # http.disconnect
                return
            try:
                found = stream.objects.feed(message.get("body", b""))
            except InvalidStream as error:
                _logger.warning("agent %s sent an invalid status stream on %s: %s", stream.agent_id, stream.path, error)
                raise _Refused(400, f"Invalid status stream: {error}") from None
            for fields in found:
                try:
                    update = read_status_update(fields)
                except InvalidStatusUpdate as error:
                    _logger.warning("agent %s sent an invalid status update (%s): ignored", stream.agent_id, error)
                    continue
                stream.version += 1
                if stream.agent is None:
                    stream.agent = self._register(stream, update)
                    # Replaced by a newer stream of the same agent: this one ends.
                    watch.start_soon(_cancel_when_set, stream.agent.connection_closed, watch.cancel_scope)
                    continue
                changed = stream.agent.update_status(update.snapshot(stream.version))
                if update.agent_name != stream.agent.name:
                    stream.agent.name, changed = update.agent_name, True
                if changed:
                    self._pool.notify_changed()
            if not message.get("more_body", False):
                return

    def _register(self, stream: _Stream, update: LegacyStatusUpdate) -> AgentController:
        agent_id = stream.agent_id
        earlier = self._pool.get(agent_id)
        if earlier is not None:
            if earlier.legacy_status_stream is None:
                _logger.warning("refused a status stream for agent %s: an agent with this id is connected by its socket", agent_id)
                raise _Refused(409, f"Agent id {agent_id} is already registered")
            # The agent reconnected: its earlier stream may be half-open and never end on its own.
            self._pool.deregister(earlier)
        # Nothing is ever sent to such an agent: its outbox leads nowhere.
        outbox, nowhere = trio.open_memory_channel[Any](0)
        nowhere.close()
        agent = AgentController(
            id=agent_id,
            name=update.agent_name,
            status=update.snapshot(stream.version),
            outbox=outbox,
            kind=AgentKind.LLAMA_SERVER,
            legacy_status_stream=update.format,
        )
        self._pool.register(agent)  # no other agent took the id: nothing awaited since the check above
        _logger.info(
            "agent %s (%s) registered by a %s status stream on %s, watching the llama-server at %s",
            agent_id,
            agent.name or "unnamed",
            update.format.value,
            stream.path,
            update.external_llamacpp_addr,
        )
        return agent


async def _cancel_when_set(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def _answer(send: AsgiSend, status: int, body: str, *, json_body: bool = False) -> None:
    """Plain text, as Paddler's errors; JSON for a refused key, as the agents' socket answers it."""
    headers = [(b"content-type", b"application/json" if json_body else b"text/plain; charset=utf-8")] if body else []
    if json_body:
        headers.append((b"www-authenticate", b"Bearer"))
    try:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body.encode()})
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the agent is gone; it ignores the answer anyway
