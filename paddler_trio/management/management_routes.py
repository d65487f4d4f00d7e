"""The management service (spec 4): agents and their socket, desired and applicable state,
the buffer's size, per-agent proxied queries, and Prometheus metrics.

SSE streams (`/api/v1/agents/stream`, `/api/v1/buffered_requests/stream`) send the current
value on connect and after every change, a `: keep-alive` comment after 10 s of quiet,
and end when the balancer shuts down.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import trio
from quart import Response, request
from quart_trio import QuartTrio

from paddler_trio.management.agent_socket import (
    AgentSocket,
)
from paddler_trio.management.balancer_gauges import BalancerGauges
from paddler_trio.management.reconciliation import Reconciliation
from paddler_trio.management.state_database import MemoryStateDatabase, StateDatabaseUnavailable
from paddler_trio.protocol import (
    AgentKind,
    AgentRequest,
    BalancerDesiredState,
    BufferedRequestsSnapshot,
    ChatTemplateOverrideResponse,
    ErrorEnvelope,
    GetChatTemplateOverrideRequest,
    GetModelMetadataRequest,
    ModelMetadataResponse,
    RequestEnvelope,
    WireFormatError,
    from_json,
    to_json,
)
from paddler_trio.proxy.agent_pool import AgentPool
from paddler_trio.proxy.buffer import RequestBuffer
from paddler_trio.proxy.request_id import new_request_id
from paddler_trio.proxy.service_app import create_service_app, plain_text_error
from paddler_trio.proxy.shutdown_signal import ShutdownSignal

_logger = logging.getLogger(__name__)

SSE_KEEP_ALIVE_INTERVAL = 10.0
AGENT_ANSWER_TIMEOUT = 3.0
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8; escaping=values"


class ManagementService:
    def __init__(
        self,
        *,
        pool: AgentPool,
        buffer: RequestBuffer,
        state_database: MemoryStateDatabase,
        reconciliation: Reconciliation,
        shutdown: ShutdownSignal,
        metrics_prefix: str,
    ) -> None:
        self._pool = pool
        self._buffer = buffer
        self._state_database = state_database
        self._reconciliation = reconciliation
        self._shutdown = shutdown
        self._metrics_prefix = metrics_prefix
        # Served ahead of the app, from its ASGI interface (`agent_socket_route.py`).
        self.agent_socket = AgentSocket(pool, reconciliation, shutdown)

    def create_app(self, cors_allowed_origins: list[str]) -> QuartTrio:
        app = create_service_app("paddler-management", cors_allowed_origins)
        routes: list[tuple[str, Callable[..., Awaitable[Response]], list[str]]] = [
            ("/health", self.health, ["GET"]),
            ("/api/v1/agents", self.agents, ["GET"]),
            ("/api/v1/agents/stream", self.agents_stream, ["GET"]),
            ("/api/v1/balancer_desired_state", self.get_desired_state, ["GET"]),
            ("/api/v1/balancer_desired_state", self.put_desired_state, ["PUT"]),
            ("/api/v1/balancer_applicable_state", self.applicable_state, ["GET"]),
            ("/api/v1/buffered_requests", self.buffered_requests, ["GET"]),
            ("/api/v1/buffered_requests/stream", self.buffered_requests_stream, ["GET"]),
            ("/api/v1/agent/<agent_id>/chat_template_override", self.chat_template_override, ["GET"]),
            ("/api/v1/agent/<agent_id>/model_metadata", self.model_metadata, ["GET"]),
            ("/metrics", self.metrics, ["GET"]),
        ]
        for path, view, methods in routes:
            app.add_url_rule(path, endpoint=view.__name__, view_func=view, methods=methods)
        return app

    async def health(self) -> Response:
        return Response("OK", content_type="text/plain")

    async def agents(self) -> Response:
        return _json(to_json(self._pool.snapshot()))

    async def agents_stream(self) -> Response:
        return self._sse(lambda: to_json(self._pool.snapshot()), lambda: self._pool.version, self._pool.wait_changed)

    async def get_desired_state(self) -> Response:
        return _json(to_json(await self._state_database.read()))

    async def put_desired_state(self) -> Response:
        body = await request.get_data(as_text=False)
        try:
            state = from_json(body, BalancerDesiredState)
        except WireFormatError as error:
            return plain_text_error(400, f"Invalid balancer desired state: {error}")
        problems = state.inference_parameters.validate()
        if problems:
            return plain_text_error(400, "Invalid inference parameters: " + "; ".join(problems))
        try:
            await self._state_database.store(state)
        except StateDatabaseUnavailable as error:
            _logger.error("cannot store the desired state: %s", error)
            return plain_text_error(503, f"Cannot store the desired state: {error}")
        except OSError as error:
            _logger.error("cannot store the desired state: %s", error)
            return plain_text_error(500, f"Cannot store the desired state: {error}")
        _logger.info("desired state updated")
        return Response("", status=204)

    async def applicable_state(self) -> Response:
        state = self._reconciliation.applicable_state
        return _json("null" if state is None else to_json(state))

    async def buffered_requests(self) -> Response:
        return _json(to_json(BufferedRequestsSnapshot(self._buffer.current)))

    async def buffered_requests_stream(self) -> Response:
        return self._sse(
            lambda: to_json(BufferedRequestsSnapshot(self._buffer.current)),
            lambda: self._buffer.version,
            self._buffer.wait_changed,
        )

    async def chat_template_override(self, agent_id: str) -> Response:
        answer = await self._ask_agent(agent_id, GetChatTemplateOverrideRequest())
        if isinstance(answer, Response):
            return answer
        if not isinstance(answer, ChatTemplateOverrideResponse):
            return _unexpected_answer(agent_id)
        return _json(to_json(answer.chat_template) if answer.chat_template is not None else "null")

    async def model_metadata(self, agent_id: str) -> Response:
        answer = await self._ask_agent(agent_id, GetModelMetadataRequest())
        if isinstance(answer, Response):
            return answer
        if not isinstance(answer, ModelMetadataResponse):
            return _unexpected_answer(agent_id)
        return _json(to_json(answer.model_metadata) if answer.model_metadata is not None else "null")

    async def metrics(self) -> Response:
        gauges = BalancerGauges.read(self._pool, self._buffer)
        blocks = [
            f"# HELP {name} {help_text}\n# TYPE {name} gauge\n{name} {value}\n"
            for name, value, help_text in gauges.named(self._metrics_prefix)
        ]
        # Ours, after the first relayed token (or finished generation) only: until then the text is exactly Paddler's,
        # which its clients' tests compare whole.
        if self._pool.generated_tokens:
            tokens = f"{self._metrics_prefix}generated_tokens_total"
            blocks.append(
                f"# HELP {tokens} Tokens generated by agents and relayed to clients\n"
                f"# TYPE {tokens} counter\n{tokens} {self._pool.generated_tokens}\n"
            )
        reachable = self._state_database.reachable
        if reachable is not None:  # a shared store (etcd): whether this balancer follows it now
            name = f"{self._metrics_prefix}state_database_reachable"
            blocks.append(
                f"# HELP {name} Whether the shared state database answers (0: serving the last desired state known)\n"
                f"# TYPE {name} gauge\n{name} {int(reachable)}\n"
            )
        if self._pool.cached_prompt_tokens or self._pool.prefilled_prompt_tokens:
            for kind, value, help_text in (
                ("cached", self._pool.cached_prompt_tokens, "Prompt tokens served from the agents' prompt caches"),
                ("prefilled", self._pool.prefilled_prompt_tokens, "Prompt tokens the agents prefilled"),
            ):
                name = f"{self._metrics_prefix}prompt_tokens_{kind}_total"
                blocks.append(f"# HELP {name} {help_text}\n# TYPE {name} counter\n{name} {value}\n")
        response = Response("\n".join(blocks))
        response.headers["Content-Type"] = PROMETHEUS_CONTENT_TYPE
        return response

    async def _ask_agent(self, agent_id: str, question: AgentRequest) -> Any:
        """The agent's answer, or the error response: 404 unknown agent, 409 an agent that watches a
        llama-server (it answers nothing over a link), 502 agent gone, 504 after 3 s."""
        agent = self._pool.get(agent_id)
        if agent is None:
            return plain_text_error(404, f'Agent "{agent_id}" is not registered')
        if agent.kind is not AgentKind.ENGINE:
            return plain_text_error(
                409, f'Agent "{agent_id}" watches a llama-server and answers no requests; ask that llama-server (/props)'
            )
        request_id = new_request_id()
        route = agent.open_route(request_id)
        try:
            try:
                agent.outbox.send_nowait(RequestEnvelope(id=request_id, request=question))
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                return plain_text_error(500, f'Failed to send the request to agent "{agent_id}"')
            with trio.move_on_after(AGENT_ANSWER_TIMEOUT):
                try:
                    reply = await route.receive()
                except trio.EndOfChannel:
                    return plain_text_error(502, f'Agent "{agent_id}" disconnected before answering')
                if isinstance(reply, ErrorEnvelope):
                    return plain_text_error(502, f'Agent "{agent_id}" answered with an error: {reply.error.description}')
                return reply.response
            return plain_text_error(504, f'Agent "{agent_id}" did not answer within {AGENT_ANSWER_TIMEOUT:g} s')
        finally:
            agent.close_route(request_id)

    def _sse(
        self,
        current: Callable[[], str],
        version: Callable[[], int],
        wait_changed: Callable[[int], Awaitable[int]],
    ) -> Response:
        shutdown = self._shutdown

        async def events() -> AsyncIterator[bytes]:
            while not shutdown.triggered:
                seen = version()
                yield f"data: {current()}\n\n".encode()
                while seen == version() and not shutdown.triggered:
                    with shutdown.cancel_scope(), trio.move_on_after(SSE_KEEP_ALIVE_INTERVAL) as quiet:
                        await wait_changed(seen)
                    if quiet.cancelled_caught:
                        yield b": keep-alive\n\n"

        response = Response(events(), status=200, content_type="text/event-stream")
        response.headers["Cache-Control"] = "no-cache"
        response.timeout = None
        return response


def _unexpected_answer(agent_id: str) -> Response:
    return plain_text_error(502, f'Agent "{agent_id}" sent an unexpected answer')


def _json(text: str) -> Response:
    return Response(text, status=200, content_type="application/json")
