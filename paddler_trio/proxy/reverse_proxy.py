"""The reverse proxy (`--reverseproxy-addr`): any HTTP request, passed through to the llama-server
of a `llama_server` agent, its answer streamed back as it comes (SSE, chunked), as Paddler 1.x
and Rower do (spec paddler-1x-llama-server-mode.md, 3.7), without their bugs (its section 6).

Which llama-server, and what happens when it fails, is `llama_server_passage.py`'s: a request
that runs the model (`SLOT_PATHS`, POST) claims a slot, waiting in the balancer's buffer when
none is free (429 when the buffer is full, 504 past its timeout); with `cache-aware` routing, a
chat's next turn goes where its prefix is (`prefix_chain.passed_through_chain`). Any other
request (`/v1/models`, `/props`, `/health`, a preflight) goes to any healthy llama-server agent.
A failure mid-answer cuts the client's connection: the client sees its stream end early. A
client that leaves, even while its request waits for a slot or for the first byte, cancels the
request's nursery, which closes the connection to llama-server, which then stops generating.

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

from paddler_trio.proxy.agent_wants import LLAMA_SERVER_AGENT
from paddler_trio.proxy.llama_server_passage import LlamaServerPassage, PassageRefused, UpstreamRequest
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
JSON = "application/json"


@attrs.frozen(kw_only=True)
class ReverseProxySettings:
    keys: ApiKeys = ApiKeys()
    slots_endpoint_enabled: bool = False


class ReverseProxyService:
    def __init__(
        self,
        *,
        passage: LlamaServerPassage,
        shutdown: ShutdownSignal,
        settings: ReverseProxySettings,
    ) -> None:
        self._passage = passage
        self._shutdown = shutdown
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
        upstream_request = UpstreamRequest(
            method=request.method,
            target=request.target,
            headers=tuple((name, value) for name, value in request.headers.items() if name not in HOP_BY_HOP_HEADERS),
            body=body,
            uses_slot=uses_slot,
            prefix=_prefix_of(body) if uses_slot and self._passage.routes_by_prefix else NO_PREFIX,
        )
        try:
            async with self._passage.open(upstream_request, LLAMA_SERVER_AGENT) as response:
                await exchange.start_stream(response.status_code, _passed_back(response.headers.raw))
                try:
                    async for chunk in response.aiter_raw():
                        await exchange.send_chunk(chunk)
                except httpx.TransportError as error:
                    _logger.warning("a llama-server broke off its answer to %s: %s", request.path, error)
                    return  # the client's connection closes without the end of the body
                await exchange.end_stream()
        except PassageRefused as refusal:
            await _answer_error(exchange, refusal.status, refusal.message)


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
