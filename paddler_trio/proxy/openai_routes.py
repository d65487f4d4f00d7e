"""The OpenAI-compatible service (`paddler balancer --compat-openai-addr HOST:PORT`, spec 3 and
"Where we go beyond Paddler", item 6).

Routes: `GET /health`, `GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/chat/completions`,
`POST /v1/responses`, `POST /v1/completions`, `POST /v1/embeddings`. A request for the cluster's
model goes through the same buffer, slot choice, item timeout, agent-loss handling and
cancellation as the native routes (`RequestForwarder`, via `OpenAIDispatcher`); one for a model a
llama-server agent serves is passed to that llama-server as it came (`openai_model_routing.py`,
`openai_passthrough.py`), through the same buffer. Every error, 404 and 405
included, has OpenAI's `{"error": {...}}` shape. CORS origins are the inference service's.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from paddler_trio.proxy.agent_pool import AgentPool
from paddler_trio.proxy.forwarding import RequestForwarder
from paddler_trio.proxy.inference_routes import ApplicableStateSource
from paddler_trio.proxy.openai_chat_completions import chat_completions
from paddler_trio.proxy.openai_completions import completions
from paddler_trio.proxy.openai_dispatch import OpenAIDispatcher
from paddler_trio.proxy.openai_embeddings import embeddings
from paddler_trio.proxy.openai_errors import OpenAIError
from paddler_trio.protocol import AgentKind
from paddler_trio.proxy.agent_wants import AgentWants
from paddler_trio.proxy.llama_server_passage import LlamaServerPassage, UpstreamRequest
from paddler_trio.proxy.openai_model_routing import ServedModels
from paddler_trio.proxy.openai_models import model_entry, model_id, model_list
from paddler_trio.proxy.openai_passthrough import pass_through
from paddler_trio.proxy.prefix_chain import NO_PREFIX, passed_through_chain
from paddler_trio.proxy.openai_request_fields import RequestObject, parse_body
from paddler_trio.proxy.openai_responses import responses
from paddler_trio.proxy.request_nursery import with_request_nurseries
from paddler_trio.proxy.service_app import MAX_REQUEST_BODY_BYTES, create_service_app

_logger = logging.getLogger(__name__)


def json_response(payload: dict[str, Any]) -> Response:
    return Response(json.dumps(payload, ensure_ascii=False), status=200, content_type="application/json")


class OpenAIService:
    def __init__(
        self,
        *,
        forwarder: RequestForwarder,
        pool: AgentPool,
        cluster: ApplicableStateSource,
        passage: LlamaServerPassage,
    ) -> None:
        self._dispatcher = OpenAIDispatcher(forwarder=forwarder, cluster=cluster)
        self._pool = pool
        self._passage = passage
        self._cluster = cluster
        self._started = int(time.time())

    def create_app(self, cors_allowed_origins: list[str]) -> QuartTrio:
        app = create_service_app("paddler-openai", cors_allowed_origins)
        app.register_error_handler(OpenAIError, self._error)
        app.register_error_handler(RequestEntityTooLarge, self._body_too_large)
        app.register_error_handler(HTTPException, self._http_error)
        app.add_url_rule("/health", view_func=self.health, methods=["GET"])
        app.add_url_rule("/v1/models", view_func=self.models, methods=["GET"])
        app.add_url_rule("/v1/models/<path:identifier>", view_func=self.model, methods=["GET"])
        app.add_url_rule("/v1/chat/completions", view_func=self.chat_completions, methods=["POST"])
        app.add_url_rule("/v1/responses", view_func=self.responses, methods=["POST"])
        app.add_url_rule("/v1/completions", view_func=self.completions, methods=["POST"])
        app.add_url_rule("/v1/embeddings", view_func=self.embeddings, methods=["POST"])
        return with_request_nurseries(app)

    async def health(self) -> Response:
        return Response("OK", content_type="text/plain")

    async def models(self) -> Response:
        return json_response(model_list(self._served_models().ids, created=self._started))

    async def model(self, identifier: str) -> Response:
        return json_response(model_entry(self._served_models(), identifier, created=self._started))

    async def chat_completions(self) -> Response:
        body = await self._body_for_engine_agents()
        if isinstance(body, Response):
            return body
        return _as_response(await chat_completions(self._dispatcher, body))

    async def responses(self) -> Response:
        body = await self._body_for_engine_agents()
        if isinstance(body, Response):
            return body
        return _as_response(await responses(self._dispatcher, body))

    async def completions(self) -> Response:
        body = await self._body_for_engine_agents()
        if isinstance(body, Response):
            return body
        return _as_response(await completions(self._dispatcher, body))

    async def embeddings(self) -> Response:
        body = await self._body_for_engine_agents()
        if isinstance(body, Response):
            return body
        return json_response(await embeddings(self._dispatcher, self._cluster, self._pool, body))

    def _served_models(self) -> ServedModels:
        state = self._cluster.applicable_state
        return ServedModels.of(model_id(state.model) if state is not None else None, self._pool)

    async def _body_for_engine_agents(self) -> RequestObject | Response:
        """The request's body when its model is the engine agents'; else llama-server's answer to it."""
        data = await request.get_data()
        body = parse_body(data)
        model = body.data.get("model")
        wants = self._served_models().wants(model if isinstance(model, str) else None)
        if wants.kind is AgentKind.ENGINE:
            return body
        return await self._pass_through(data, body, wants)

    async def _pass_through(self, data: bytes, body: RequestObject, wants: AgentWants) -> Response:
        query = request.query_string.decode("latin-1")
        upstream_request = UpstreamRequest(
            method="POST",
            target=f"{request.path}?{query}" if query else request.path,
            headers=(("content-type", "application/json"), ("accept", request.headers.get("accept", "*/*"))),
            body=data,
            uses_slot=True,
            prefix=passed_through_chain(body.data) if self._passage.routes_by_prefix else NO_PREFIX,
        )
        return await pass_through(self._passage, upstream_request, wants)

    async def _error(self, error: OpenAIError) -> Response:
        log = _logger.warning if error.status >= 500 else _logger.info
        log("%s %s answered %d: %s", request.method, request.path, error.status, error.message)
        return error.response()

    async def _body_too_large(self, _: RequestEntityTooLarge) -> Response:
        return OpenAIError(
            413, f"Request body is larger than the {MAX_REQUEST_BODY_BYTES // (1024 * 1024)} MiB limit"
        ).response()

    async def _http_error(self, error: HTTPException) -> Response:
        status = error.code or 500
        code = {404: "not_found", 405: "method_not_allowed"}.get(status)
        return OpenAIError(status, error.description or error.name, code=code).response()


def _as_response(result: Response | dict[str, Any]) -> Response:
    return result if isinstance(result, Response) else json_response(result)
