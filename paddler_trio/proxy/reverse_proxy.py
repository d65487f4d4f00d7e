"""The reverse proxy (`--reverseproxy-addr`): any HTTP request, passed through to the llama-server
of a `llama_server` agent, its answer streamed back as it comes (SSE, chunked), as Paddler 1.x
and Rower do (spec paddler-1x-llama-server-mode.md, 3.7), without their bugs (its section 6).

Which llama-server: a request that runs the model (`SLOT_PATHS`, POST) claims a slot, by the
pool's routing policy among the llama-server agents with a free one (so with `cache-aware`, a
chat's next turn goes where its prefix is, `prefix_chain.passed_through_chain`), and waits in the
balancer's buffer when none is free (429 when the buffer is full, 504 past its timeout). The
claim counts at once and is released when the answer ends, however it ends; the agent's
reports never erase it (`AgentController.slots_busy`). Any other request (`/v1/models`,
`/props`, `/health`, a preflight) goes to any llama-server agent that is healthy, free slot or
not.

Failures: a llama-server that refuses the connection, or closes it before its answer's first
byte, is taken out of rotation until its agent's next status update, and the request is sent
once more, to another agent (its body is read whole first, so that it can be sent again). A
failure mid-answer cuts the client's connection: the client sees its stream end early. A client
that leaves cancels the request's nursery, which closes the connection to llama-server, which
then stops generating and frees its slot.

Passed through unchanged: method, path and query, headers but the hop-by-hop ones (`Host` as
received, or the agent's llama-server address with `--rewrite-host-header`), the body, and the
answer's status, headers and body bytes (compressed or not). `Authorization` goes through
untouched, so a llama-server started with `--api-key` checks its own key. With
`--reverseproxy-api-key`, the proxy checks the key first (the same key must then suit
llama-server, or llama-server runs without one). `/slots` is refused (403) unless
`--slots-endpoint-enable`. Errors of the proxy itself are OpenAI-shaped JSON.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

import attrs
import httpx

from paddler_trio.proxy.agent_controller import AgentController
from paddler_trio.proxy.agent_pool import AgentPool, SlotClaim
from paddler_trio.proxy.agent_wants import LLAMA_SERVER_AGENT
from paddler_trio.proxy.buffer import BufferOverflow, BufferTimeout, RequestBuffer
from paddler_trio.proxy.prefix_chain import NO_PREFIX, PrefixChain, passed_through_chain
from paddler_trio.proxy.shutdown_signal import ShutdownSignal
from paddler_trio.security.api_keys import ApiKeys, refusal_of_request
from paddler_trio.security.error_shapes import openai_error_body
from paddler_trio.security.refusal_log import RefusalLog
from paddler_trio.transport.http_server import BodyTooLarge, Exchange

_logger = logging.getLogger(__name__)

# Every llama-server route that runs the model on a slot (spec 5.9: more than Paddler's three).
SLOT_PATHS = frozenset(
    {
        "/completion",
        "/completions",
        "/v1/completions",
        "/chat/completions",
        "/v1/chat/completions",
        "/infill",
        "/responses",
        "/v1/responses",
        "/v1/messages",
        "/embedding",
        "/embeddings",
        "/v1/embeddings",
        "/rerank",
        "/reranking",
        "/v1/rerank",
        "/v1/reranking",
    }
)
SLOTS_PATH = "/slots"
# RFC 9110 7.6.1, plus what only makes sense between the client and us.
HOP_BY_HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
        "content-length",
    }
)
# Headers httpx adds to a request that did not have them; a proxy adds none.
_HTTPX_DEFAULT_HEADERS = ("accept", "accept-encoding", "user-agent")
# A llama-server that has not accepted the connection by then is taken as down. Nothing bounds
# the answer: a long prompt may take minutes before its first token on a CPU.
CONNECT_TIMEOUT = 3.0
JSON = "application/json"


class _NoAnswer(Exception):
    """The llama-server sent no byte back: refused, unreachable, or closed before answering."""


@attrs.frozen(kw_only=True)
class ReverseProxySettings:
    keys: ApiKeys = ApiKeys()
    rewrite_host_header: bool = False
    slots_endpoint_enabled: bool = False


def upstream_client() -> httpx.AsyncClient:
    """The proxy's connections to llama-servers, kept alive between requests."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
        follow_redirects=False,
        trust_env=False,
    )


class ReverseProxyService:
    def __init__(
        self,
        *,
        pool: AgentPool,
        buffer: RequestBuffer,
        shutdown: ShutdownSignal,
        client: httpx.AsyncClient,
        settings: ReverseProxySettings,
    ) -> None:
        self._pool = pool
        self._buffer = buffer
        self._shutdown = shutdown
        self._client = client
        self._settings = settings
        self._refusals = RefusalLog(_logger)

    async def handle(self, exchange: Exchange) -> None:
        request = exchange.request
        if request.method != "OPTIONS" and (refusal := refusal_of_request(self._settings.keys, request.headers.get("authorization"))):
            self._refusals.refused(request.client, refusal.reason, "reverse proxy refused %s: %s", request.path, refusal.reason)
            await _answer_error(exchange, 401, refusal.description)
            return
        if request.path == SLOTS_PATH and not self._settings.slots_endpoint_enabled:
            await _answer_error(exchange, 403, "/slots is not passed through: start the balancer with --slots-endpoint-enable")
            return
        if self._shutdown.draining:
            await _answer_error(exchange, 503, "the balancer is shutting down")
            return
        try:
            body = await exchange.read_body()
        except BodyTooLarge:
            self._refusals.refused(request.client, "body size", "reverse proxy refused %s: body too large", request.path)
            await _answer_error(exchange, 413, f"Request body is larger than the {exchange.max_body_bytes} bytes limit")
            return
        exchange.cancel_when_client_leaves()  # also while it waits for a slot or for the first byte
        with self._shutdown.in_flight(), self._shutdown.cancel_scope() as shutdown_scope:
            await self._pass_through(exchange, body)
        if shutdown_scope.cancelled_caught and not exchange.answered:
            await _answer_error(exchange, 503, "the balancer is shutting down")

    async def _pass_through(self, exchange: Exchange, body: bytes) -> None:
        request = exchange.request
        uses_slot = request.method == "POST" and request.path in SLOT_PATHS
        prefix = _prefix_of(body) if uses_slot and self._buffer.routes_by_prefix else NO_PREFIX
        for attempt in (1, 2):
            claim: SlotClaim | None = None
            if uses_slot:
                try:
                    claim = await self._buffer.claim(prefix, LLAMA_SERVER_AGENT)
                except BufferOverflow:
                    await _answer_error(exchange, 429, "too many requests are waiting for a free llama-server slot")
                    return
                except BufferTimeout:
                    await _answer_error(exchange, 504, "waiting for a free llama-server slot timed out")
                    return
                agent = claim.agent
            else:
                chosen = self._pool.any_serving(LLAMA_SERVER_AGENT)
                if chosen is None:
                    await _answer_error(exchange, 503, "no llama-server agent is available")
                    return
                agent = chosen
            try:
                await self._forward(exchange, body, agent)
                return
            except _NoAnswer as failure:
                self._take_out_of_rotation(agent, str(failure))
                if claim is not None:
                    claim.forget_prefix()
            finally:
                if claim is not None:
                    claim.release()
            if attempt == 1:
                _logger.info("sending %s %s to another llama-server agent", request.method, request.path)
        await _answer_error(exchange, 502, "no llama-server agent answered the request")

    async def _forward(self, exchange: Exchange, body: bytes, agent: AgentController) -> None:
        """Send the request to `agent`'s llama-server and stream its answer back; `_NoAnswer`
        when nothing came back (so the request may go elsewhere)."""
        request = exchange.request
        assert agent.status.llama_server is not None  # a llama_server agent reports its address
        address = agent.status.llama_server.external_llamacpp_addr
        headers = [(name, value) for name, value in request.headers.items() if name not in HOP_BY_HOP_HEADERS]
        if self._settings.rewrite_host_header:
            headers = [(name, value) for name, value in headers if name != "host"] + [("host", address)]
        upstream_request = self._client.build_request(
            request.method, httpx.URL(f"http://{address}").copy_with(raw_path=request.target.encode()), headers=headers, content=body
        )
        for name in _HTTPX_DEFAULT_HEADERS:
            if name not in request.headers:
                del upstream_request.headers[name]
        try:
            response = await self._client.send(upstream_request, stream=True)
        except httpx.TransportError as error:
            raise _NoAnswer(f"{type(error).__name__}: {error}") from error
        try:
            await exchange.start_stream(response.status_code, _passed_back(response.headers.raw))
            try:
                async for chunk in response.aiter_raw():
                    await exchange.send_chunk(chunk)
            except httpx.TransportError as error:
                _logger.warning("llama-server of agent %s broke off its answer to %s: %s", agent.id, request.path, error)
                return  # the client's connection closes without the end of the body
            await exchange.end_stream()
        finally:
            await response.aclose()

    def _take_out_of_rotation(self, agent: AgentController, why: str) -> None:
        _logger.warning(
            "llama-server of agent %s sent nothing back (%s): no more requests go there until the agent reports again",
            agent.id,
            why,
        )
        agent.unresponsive = True
        self._pool.notify_changed()


def _prefix_of(body: bytes) -> PrefixChain:
    try:
        return passed_through_chain(json.loads(body))
    except ValueError:
        return NO_PREFIX  # not JSON: llama-server will say what is wrong with it


def _passed_back(raw_headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in raw_headers
        if name.decode("latin-1").lower() not in HOP_BY_HOP_HEADERS - {"content-length"}
    ]


async def _answer_error(exchange: Exchange, status: int, message: str) -> None:
    await exchange.respond(status, openai_error_body(status, message).encode(), [("content-type", JSON)])
