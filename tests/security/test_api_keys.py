"""API keys on every service and transport of a real balancer process: HTTP (JSON, NDJSON),
SSE, WebSocket (header, subprotocol, query parameter) and the OpenAI service; /health and
CORS preflights stay open; refusals are logged once per client per minute, keys never."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import trio_websocket

from tests.security.balancer_processes import (
    SecuredBalancer,
    refusal_lines,
    secured_balancer,
)

INFERENCE_KEY = "inference-key-1"
FILE_KEY = "inference-key-from-file"
MANAGEMENT_KEY = "management-key-env"
ORIGIN = "http://panel.example"
RAW_PROMPT = {"raw_prompt": "Hi", "max_tokens": 4}


@pytest.fixture(scope="module")
def balancer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredBalancer]:
    directory = tmp_path_factory.mktemp("api-keys")
    key_file = directory / "inference-keys"
    key_file.write_text(f"# inference keys\n{FILE_KEY}\n")
    with secured_balancer(
        directory,
        "--inference-api-key",
        INFERENCE_KEY,
        "--inference-api-key-file",
        str(key_file),
        "--inference-cors-allowed-host",
        ORIGIN,
        "--buffered-request-timeout",
        "200",
        environment={"PADDLER_MANAGEMENT_API_KEY": f" other-key , {MANAGEMENT_KEY}"},
    ) as balancer:
        yield balancer


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["content-type"] == "application/json"
    assert "error" in response.json()


@pytest.mark.parametrize("service", ["inference", "management", "openai"])
def test_health_stays_open(balancer: SecuredBalancer, service: str) -> None:
    assert httpx.get(f"{balancer.url(service)}/health").text == "OK"


@pytest.mark.parametrize("key", [INFERENCE_KEY, FILE_KEY])
def test_ndjson_route_takes_flag_and_file_keys(balancer: SecuredBalancer, key: str) -> None:
    response = httpx.post(f"{balancer.url('inference')}/api/v1/continue_from_raw_prompt", json=RAW_PROMPT, headers=bearer(key))
    assert response.status_code == 200
    # No agent: the request waited its 200 ms in the buffer, so it was really dispatched.
    assert '"code":504' in response.text


@pytest.mark.parametrize(
    "headers",
    [{}, bearer("wrong"), bearer(MANAGEMENT_KEY), {"Authorization": INFERENCE_KEY}, {"Authorization": "Basic dXNlcjpwYXNz"}],
    ids=["none", "wrong", "other-service-key", "no-scheme", "basic"],
)
@pytest.mark.parametrize(
    "path", ["/api/v1/continue_from_raw_prompt", "/api/v1/continue_from_conversation_history", "/api/v1/generate_embedding_batch"]
)
def test_inference_http_routes_refuse_without_the_key(balancer: SecuredBalancer, path: str, headers: dict[str, str]) -> None:
    assert_refused(httpx.post(f"{balancer.url('inference')}{path}", json=RAW_PROMPT, headers=headers))


def test_unknown_routes_are_refused_too(balancer: SecuredBalancer) -> None:
    assert_refused(httpx.get(f"{balancer.url('inference')}/nope"))


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/api/v1/agents"),
        ("GET", "/api/v1/balancer_desired_state"),
        ("PUT", "/api/v1/balancer_desired_state"),
        ("GET", "/api/v1/balancer_applicable_state"),
        ("GET", "/api/v1/buffered_requests"),
        ("GET", "/api/v1/agent/some-agent/model_metadata"),
        ("GET", "/api/v1/agent/some-agent/chat_template_override"),
        ("GET", "/metrics"),
    ],
)
def test_management_routes_take_only_management_keys(balancer: SecuredBalancer, method: str, path: str) -> None:
    url = f"{balancer.url('management')}{path}"
    assert_refused(httpx.request(method, url))
    assert_refused(httpx.request(method, url, headers=bearer(INFERENCE_KEY)))
    response = httpx.request(method, url, headers=bearer(MANAGEMENT_KEY), content=b"{}")
    assert response.status_code != 401


@pytest.mark.parametrize("path", ["/api/v1/agents/stream", "/api/v1/buffered_requests/stream"])
def test_sse_streams(balancer: SecuredBalancer, path: str) -> None:
    url = f"{balancer.url('management')}{path}"
    assert_refused(httpx.get(url))
    with httpx.stream("GET", url, headers=bearer(MANAGEMENT_KEY), timeout=5) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert next(response.iter_lines()).startswith("data: ")


def test_other_management_key_from_the_environment_works(balancer: SecuredBalancer) -> None:
    assert httpx.get(f"{balancer.url('management')}/api/v1/agents", headers=bearer("other-key")).status_code == 200


def test_cors_preflight_stays_open(balancer: SecuredBalancer) -> None:
    response = httpx.options(
        f"{balancer.url('inference')}/api/v1/continue_from_raw_prompt",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"},
    )
    assert response.status_code == 200
    assert "Authorization" in response.headers["access-control-allow-headers"]


@pytest.mark.parametrize("path", ["/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"])
def test_openai_service_refuses_in_openai_shape(balancer: SecuredBalancer, path: str) -> None:
    method = "GET" if path == "/v1/models" else "POST"
    for headers in ({}, bearer("wrong"), bearer(MANAGEMENT_KEY)):
        response = httpx.request(method, f"{balancer.url('openai')}{path}", json={}, headers=headers)
        assert_refused(response)
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert error["code"] == "invalid_api_key"
        assert error["param"] is None
        assert isinstance(error["message"], str)


def test_openai_service_takes_inference_keys(balancer: SecuredBalancer) -> None:
    response = httpx.get(f"{balancer.url('openai')}/v1/models", headers=bearer(FILE_KEY))
    assert response.status_code == 200
    assert response.json()["object"] == "list"


async def _rejected_status(url: str, **options: object) -> int:
    try:
        async with trio_websocket.open_websocket_url(url, **options):  # type: ignore[arg-type]
            pass
    except trio_websocket.ConnectionRejected as rejection:
        return rejection.status_code
    return 101


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"extra_headers": [("Authorization", "Bearer wrong")]},
        {"subprotocols": ["bearer.wrong"]},
        {"extra_headers": [("Authorization", f"Bearer {MANAGEMENT_KEY}")]},
    ],
    ids=["none", "wrong-header", "wrong-subprotocol", "other-service-key"],
)
async def test_inference_socket_is_refused_before_accepting(balancer: SecuredBalancer, options: dict) -> None:
    assert await _rejected_status(balancer.ws_url("inference", "/api/v1/inference_socket"), **options) == 401
    assert await _rejected_status(balancer.ws_url("inference", "/api/v1/inference_socket?api_key=wrong")) == 401


async def test_inference_socket_takes_the_key_three_ways(balancer: SecuredBalancer) -> None:
    url = balancer.ws_url("inference", "/api/v1/inference_socket")
    async with trio_websocket.open_websocket_url(url, extra_headers=[("Authorization", f"Bearer {INFERENCE_KEY}")]) as socket:
        await socket.send_message('{"Request":{"id":"a","request":{"ContinueFromRawPrompt":{"raw_prompt":"Hi","max_tokens":2}}}}')
        assert '"request_id":"a"' in await socket.get_message()
    async with trio_websocket.open_websocket_url(url + f"?api_key={FILE_KEY}") as socket:
        await socket.ping()
    # A browser offers its protocol and the key; the server selects the protocol, never echoes the key.
    async with trio_websocket.open_websocket_url(url, subprotocols=["paddler", f"bearer.{INFERENCE_KEY}"]) as socket:
        assert socket.subprotocol == "paddler"
    async with trio_websocket.open_websocket_url(url, subprotocols=[f"bearer.{INFERENCE_KEY}"]) as socket:
        assert socket.subprotocol == f"bearer.{INFERENCE_KEY}"


def test_refusals_are_logged_once_per_client_and_never_show_the_key(balancer: SecuredBalancer) -> None:
    secret_guess = "guessed-key-that-must-not-be-logged"
    for _ in range(30):
        assert_refused(httpx.get(f"{balancer.url('management')}/api/v1/buffered_requests", headers=bearer(secret_guess)))
    log = balancer.process.log()
    assert len(refusal_lines(log, "management", "wrong key")) == 1
    for key in (secret_guess, INFERENCE_KEY, FILE_KEY, MANAGEMENT_KEY):
        assert key not in log
