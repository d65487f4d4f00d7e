"""Hand-written OpenAPI 3 documents of the inference and management services, served at
`/openapi.json` (open, like `/health`). Schemas follow the protocol types (spec 2.2, 4.1);
`max_tokens` is bounded by the balancer's `--max-tokens-limit`. WebSocket routes cannot be
described in OpenAPI; their upgrades are listed with the 101 answer only."""

from __future__ import annotations

import json
from typing import Any

from quart import Response
from quart_trio import QuartTrio

OPENAPI_PATH = "/openapi.json"

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
}
_NDJSON_NOTE = (
    "HTTP 200 streams one JSON message per line (NDJSON, Content-Type application/json); "
    "errors after dispatch are Error lines of the stream."
)
_BEARER = [{"bearer": []}]


_PLAIN_TEXT_ERROR = {"text/plain": {"schema": {"type": "string"}}}
_JSON_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
# Paddler's own errors are plain text; those of our additions (API keys, the limits) are JSON.
_ERROR_CONTENT_BY_STATUS = {400: {**_PLAIN_TEXT_ERROR, **_JSON_ERROR}, 401: _JSON_ERROR, 413: _JSON_ERROR}


def _error(status: int, description: str) -> dict[str, Any]:
    return {"description": description, "content": _ERROR_CONTENT_BY_STATUS.get(status, _PLAIN_TEXT_ERROR)}


def _common_errors(*statuses: int) -> dict[str, Any]:
    descriptions = {
        400: "invalid body or parameters",
        401: "missing or wrong API key (when keys are configured)",
        404: "unknown agent",
        409: "not possible with this agent (it watches a llama-server, or its id is taken)",
        413: "body larger than --max-request-body-bytes",
        500: "unexpected failure",
        501: "the cluster's mode forbids this call",
        502: "the agent disconnected or answered with an error",
        503: "not available yet",
        504: "the agent did not answer in time",
    }
    return {str(status): _error(status, descriptions[status]) for status in statuses}


def _sampling_overrides() -> dict[str, Any]:
    return {
        "temperature": {"type": ["number", "null"], "minimum": 0},
        "top_p": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
        "top_k": {"type": ["integer", "null"], "minimum": 0},
        "min_p": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
        "seed": {"type": ["integer", "null"], "minimum": 0, "maximum": 4294967295},
        "stop": {"type": ["array", "null"], "items": {"type": "string", "minLength": 1}},
    }


def _components(max_tokens_limit: int) -> dict[str, Any]:
    max_tokens = {"type": "integer", "minimum": 0, "maximum": max_tokens_limit}
    schemas: dict[str, Any] = {
        "Error": _ERROR,
        "GrammarConstraint": {
            "oneOf": [
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["type", "grammar", "root"],
                    "properties": {"type": {"const": "gbnf"}, "grammar": {"type": "string"}, "root": {"type": "string"}},
                },
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["type", "schema"],
                    "properties": {"type": {"const": "json_schema"}, "schema": {"type": "string"}},
                },
            ]
        },
        "ContentPart": {
            "oneOf": [
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["type", "text"],
                    "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
                },
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["type", "image_url"],
                    "properties": {
                        "type": {"const": "image_url"},
                        "image_url": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["url"],
                            "properties": {"url": {"type": "string"}},
                        },
                    },
                },
            ]
        },
        "ConversationMessage": {
            "type": "object",
            "additionalProperties": False,
            "required": ["role", "content"],
            "properties": {
                "role": {"type": "string"},
                "content": {
                    "oneOf": [{"type": "string"}, {"type": "array", "items": {"$ref": "#/components/schemas/ContentPart"}}]
                },
            },
        },
        "Tool": {
            "type": "object",
            "additionalProperties": False,
            "required": ["type", "function"],
            "properties": {
                "type": {"const": "function"},
                "function": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name", "description"],
                    "properties": {
                        "name": {"type": "string"},
                        "description": {"type": "string"},
                        "parameters": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["type"],
                            "properties": {
                                "type": {"type": "string"},
                                "properties": {"type": "object"},
                                "required": {"type": "array", "items": {"type": "string"}},
                                "additionalProperties": {},
                            },
                        },
                    },
                },
            },
        },
        "ContinueFromConversationHistoryParams": {
            "type": "object",
            "additionalProperties": False,
            "required": ["add_generation_prompt", "conversation_history", "enable_thinking", "max_tokens"],
            "properties": {
                "add_generation_prompt": {"type": "boolean"},
                "conversation_history": {"type": "array", "items": {"$ref": "#/components/schemas/ConversationMessage"}},
                "enable_thinking": {"type": "boolean"},
                "grammar": {"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/GrammarConstraint"}]},
                "max_tokens": max_tokens,
                "parse_tool_calls": {"type": "boolean"},
                "tools": {"type": "array", "items": {"$ref": "#/components/schemas/Tool"}},
                **_sampling_overrides(),
            },
        },
        "ContinueFromRawPromptParams": {
            "type": "object",
            "additionalProperties": False,
            "required": ["raw_prompt", "max_tokens"],
            "properties": {
                "raw_prompt": {"type": "string"},
                "max_tokens": max_tokens,
                "grammar": {"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/GrammarConstraint"}]},
                **_sampling_overrides(),
            },
        },
        "NormalizationMethod": {
            "oneOf": [
                {"enum": ["L2", "None"]},
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["RmsNorm"],
                    "properties": {
                        "RmsNorm": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["epsilon"],
                            "properties": {"epsilon": {"type": "number"}},
                        }
                    },
                },
            ]
        },
        "GenerateEmbeddingBatchParams": {
            "type": "object",
            "additionalProperties": False,
            "required": ["input_batch", "normalization_method"],
            "properties": {
                "input_batch": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["id", "content"],
                        "properties": {"id": {"type": "string"}, "content": {"type": "string"}},
                    },
                },
                "normalization_method": {"$ref": "#/components/schemas/NormalizationMethod"},
            },
        },
    }
    return {
        "schemas": schemas,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    }


def _ndjson_post(schema: str, summary: str, errors: tuple[int, ...]) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "security": _BEARER,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
            },
            "responses": {
                "200": {"description": _NDJSON_NOTE, "content": {"application/json": {}}},
                **_common_errors(*errors),
            },
        }
    }


def _health() -> dict[str, Any]:
    return {
        "get": {
            "summary": "liveness",
            "security": [],
            "responses": {"200": {"description": "OK", "content": {"text/plain": {"schema": {"const": "OK"}}}}},
        }
    }


def _websocket(summary: str) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary + " (WebSocket upgrade; messages are described in the wire spec)",
            "security": _BEARER,
            "responses": {"101": {"description": "switching protocols"}, **_common_errors(401)},
        }
    }


def inference_document(max_tokens_limit: int) -> dict[str, Any]:
    generation_errors = (400, 401, 413, 501)
    return {
        "openapi": "3.1.0",
        "info": {"title": "paddler-trio inference service", "version": "4.1.0"},
        "security": _BEARER,
        "paths": {
            "/health": _health(),
            "/api/v1/continue_from_conversation_history": _ndjson_post(
                "ContinueFromConversationHistoryParams", "chat, the agent applies the chat template", generation_errors
            ),
            "/api/v1/continue_from_raw_prompt": _ndjson_post(
                "ContinueFromRawPromptParams", "raw prompt, no template", generation_errors
            ),
            "/api/v1/generate_embedding_batch": _ndjson_post(
                "GenerateEmbeddingBatchParams", "embeddings, fanned out across agents", (400, 401, 413, 501, 503)
            ),
            "/api/v1/inference_socket": _websocket("multiplexed token generation"),
        },
        "components": _components(max_tokens_limit),
    }


def _json_get(summary: str, schema: dict[str, Any], *errors: int, parameters: list[Any] | None = None) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "security": _BEARER,
        "responses": {
            "200": {"description": summary, "content": {"application/json": {"schema": schema}}},
            **_common_errors(401, *errors),
        },
    }
    if parameters:
        operation["parameters"] = parameters
    return {"get": operation}


def _sse_get(summary: str) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary + " (Server-Sent Events: data lines, keep-alive comments every 10 s)",
            "security": _BEARER,
            "responses": {
                "200": {"description": "event stream", "content": {"text/event-stream": {}}},
                **_common_errors(401),
            },
        }
    }


def management_document() -> dict[str, Any]:
    agent_id = [{"name": "agent_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    desired_state = {"type": "object"}  # BalancerDesiredState, spec 4.1
    return {
        "openapi": "3.1.0",
        "info": {"title": "paddler-trio management service", "version": "4.1.0"},
        "security": _BEARER,
        "paths": {
            "/health": _health(),
            "/api/v1/agents": _json_get(
                "the agents (AgentControllerPoolSnapshot)",
                {"type": "object", "required": ["agents"], "properties": {"agents": {"type": "array"}}},
            ),
            "/api/v1/agents/stream": _sse_get("the agents, on every change"),
            "/api/v1/balancer_desired_state": {
                **_json_get("the desired state (BalancerDesiredState)", desired_state),
                "put": {
                    "summary": "store a new desired state; agents follow it",
                    "security": _BEARER,
                    "requestBody": {"required": True, "content": {"application/json": {"schema": desired_state}}},
                    "responses": {"204": {"description": "stored"}, **_common_errors(400, 401, 413, 500)},
                },
            },
            "/api/v1/balancer_applicable_state": _json_get(
                "what agents were told (AgentDesiredState) or null", {"type": ["object", "null"]}
            ),
            "/api/v1/buffered_requests": _json_get(
                "requests waiting for a slot",
                {
                    "type": "object",
                    "required": ["buffered_requests_current"],
                    "properties": {"buffered_requests_current": {"type": "integer"}},
                },
            ),
            "/api/v1/buffered_requests/stream": _sse_get("requests waiting for a slot, on every change"),
            "/api/v1/agent/{agent_id}/chat_template_override": _json_get(
                "the agent's chat template override or null",
                {"type": ["object", "null"]},
                404,
                409,
                500,
                502,
                504,
                parameters=agent_id,
            ),
            "/api/v1/agent/{agent_id}/model_metadata": _json_get(
                "the agent's GGUF metadata or null", {"type": ["object", "null"]}, 404, 409, 500, 502, 504, parameters=agent_id
            ),
            "/status_update/{agent_id}": _legacy_status_stream("Paddler 1.0-1.2", agent_id),
            "/api/v1/agent_status_update/{agent_id}": _legacy_status_stream("Rower (and Paddler main before 2.0)", agent_id),
            "/api/v1/agent_socket/{agent_id}": {
                "get": {
                    **_websocket("an agent's connection")["get"],
                    "security": _BEARER,
                    "parameters": agent_id,
                    "summary": "an agent's connection (WebSocket; takes the agent secret, not management keys)",
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "security": _BEARER,
                    "responses": {"200": {"description": "metrics", "content": {"text/plain": {}}}, **_common_errors(401)},
                }
            },
        },
        "components": {"schemas": {"Error": _ERROR}, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


def _legacy_status_stream(agents: str, agent_id: list[Any]) -> dict[str, Any]:
    return {
        "post": {
            "summary": f"status stream of an unmodified {agents} agent watching a llama-server: a body of "
            "concatenated JSON status objects that ends when the agent leaves (takes the agent secret, not "
            "management keys)",
            "security": _BEARER,
            "parameters": agent_id,
            "requestBody": {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
            "responses": {
                "202": {"description": "the stream ended; the agent left"},
                "400": _error(400, "not a stream of JSON objects"),
                **_common_errors(401, 409),
            },
        }
    }


def serve_openapi(app: QuartTrio, document: dict[str, Any]) -> QuartTrio:
    text = json.dumps(document)

    async def openapi() -> Response:
        return Response(text, content_type="application/json")

    app.add_url_rule(OPENAPI_PATH, endpoint="openapi", view_func=openapi, methods=["GET"])
    return app


_OPENAI_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def _openai_errors(*statuses: int) -> dict[str, Any]:
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return {str(status): {"description": f"error {status} in OpenAI's shape", **error} for status in statuses}


def _openai_post(summary: str, properties: dict[str, Any], required: list[str], *, streams: bool) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": {"type": "object"}}}
    if streams:
        content["text/event-stream"] = {}
    return {
        "post": {
            "summary": summary,
            "security": _BEARER,
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"type": "object", "required": required, "properties": properties}}
                },
            },
            "responses": {
                "200": {"description": summary, "content": content},
                **_openai_errors(400, 401, 404, 413, 501, 502, 503, 504),
            },
        }
    }


def openai_document(max_tokens_limit: int) -> dict[str, Any]:
    """The OpenAI-compatible service's routes; bodies list the fields it reads (others are ignored, as OpenAI's are)."""
    tokens = {"type": "integer", "minimum": 1, "maximum": max_tokens_limit}
    content = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]}
    message = {"type": "object", "required": ["role", "content"], "properties": {"role": {"type": "string"}, "content": content}}
    sampling = {
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "seed": {"type": "integer", "minimum": 0, "maximum": 4294967295},
        "stream": {"type": "boolean"},
    }
    model_id = [{"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "paddler-trio OpenAI-compatible service", "version": "4.1.0"},
        "security": _BEARER,
        "paths": {
            "/health": _health(),
            "/v1/models": {
                "get": {
                    "summary": "the cluster's model",
                    "security": _BEARER,
                    "responses": {
                        "200": {"description": "model list", "content": {"application/json": {"schema": {"type": "object"}}}},
                        **_openai_errors(401),
                    },
                }
            },
            "/v1/models/{model_id}": {
                "get": {
                    "summary": "one model",
                    "security": _BEARER,
                    "parameters": model_id,
                    "responses": {
                        "200": {"description": "model", "content": {"application/json": {"schema": {"type": "object"}}}},
                        **_openai_errors(401, 404),
                    },
                }
            },
            "/v1/chat/completions": _openai_post(
                "chat completion",
                {
                    "model": {"type": "string"},
                    "messages": {"type": "array", "items": message},
                    "max_tokens": tokens,
                    "max_completion_tokens": tokens,
                    **sampling,
                },
                ["model", "messages"],
                streams=True,
            ),
            "/v1/completions": _openai_post(
                "text completion",
                {"model": {"type": "string"}, "prompt": {"type": "string"}, "max_tokens": tokens, **sampling},
                ["model", "prompt"],
                streams=True,
            ),
            "/v1/responses": _openai_post(
                "response",
                {"model": {"type": "string"}, "input": {"type": "string"}, "max_output_tokens": tokens, **sampling},
                ["model", "input"],
                streams=True,
            ),
            "/v1/embeddings": _openai_post(
                "embeddings",
                {"model": {"type": "string"}, "input": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}},
                ["model", "input"],
                streams=False,
            ),
        },
        "components": {"schemas": {"Error": _OPENAI_ERROR}, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
