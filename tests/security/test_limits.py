"""Request limits of a real balancer: body size (413), WebSocket message size (close 1009),
max_tokens (400 naming the limit, native, OpenAI and WebSocket), requests in flight per
inference socket (429 envelope); each logged once per client, not per request."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import trio
import trio_websocket

from tests.security.balancer_processes import (
    SecuredBalancer,
    refusal_lines,
    secured_balancer,
)

MAX_TOKENS = 50
MAX_BODY = 4000
MAX_WS_MESSAGE = 6000
IN_FLIGHT = 2


@pytest.fixture(scope="module")
def balancer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredBalancer]:
    with secured_balancer(
        tmp_path_factory.mktemp("limits"),
        "--max-tokens-limit", str(MAX_TOKENS),
        "--max-request-body-bytes", str(MAX_BODY),
        "--websocket-max-message-bytes", str(MAX_WS_MESSAGE),
        "--max-requests-per-inference-socket", str(IN_FLIGHT),
        "--buffered-request-timeout", "3000",
    ) as balancer:  # fmt: skip
        yield balancer


def ws_request(request_id: str, max_tokens: int = 2, prompt: str = "Hi") -> str:
    params = {"raw_prompt": prompt, "max_tokens": max_tokens}
    return json.dumps({"Request": {"id": request_id, "request": {"ContinueFromRawPrompt": params}}})


@pytest.mark.parametrize(
    "path,body",
    [
        ("/api/v1/continue_from_raw_prompt", {"raw_prompt": "Hi", "max_tokens": MAX_TOKENS + 1}),
        (
            "/api/v1/continue_from_conversation_history",
            {
                "add_generation_prompt": True,
                "conversation_history": [{"role": "user", "content": "Hi"}],
                "enable_thinking": False,
                "max_tokens": 10**6,
            },
        ),
    ],
)
def test_native_max_tokens_beyond_the_limit_is_a_400(balancer: SecuredBalancer, path: str, body: dict) -> None:
    response = httpx.post(f"{balancer.url('inference')}{path}", json=body)
    assert response.status_code == 400
    assert f"limit of {MAX_TOKENS}" in response.json()["error"]
    with httpx.stream("POST", f"{balancer.url('inference')}{path}", json={**body, "max_tokens": MAX_TOKENS}) as within:
        assert within.status_code == 200


@pytest.mark.parametrize(
    "path,field",
    [("/v1/chat/completions", "max_tokens"), ("/v1/chat/completions", "max_completion_tokens"), ("/v1/completions", "max_tokens"), ("/v1/responses", "max_output_tokens")],
)
def test_openai_max_tokens_beyond_the_limit_is_a_400(balancer: SecuredBalancer, path: str, field: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "prompt": "Hi", "input": "Hi", field: 4096}
    response = httpx.post(f"{balancer.url('openai')}{path}", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == field
    assert f"limit of {MAX_TOKENS}" in error["message"]


@pytest.mark.parametrize("service,path", [("inference", "/api/v1/continue_from_raw_prompt"), ("openai", "/v1/completions")])
def test_body_beyond_the_limit_is_a_413(balancer: SecuredBalancer, service: str, path: str) -> None:
    body = json.dumps({"model": "m", "raw_prompt": "x" * MAX_BODY, "prompt": "x", "max_tokens": 1})
    response = httpx.post(f"{balancer.url(service)}{path}", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert str(MAX_BODY) in response.text
    assert response.headers["content-type"] == "application/json"


async def test_websocket_max_tokens_and_in_flight_limits(balancer: SecuredBalancer) -> None:
    async with trio_websocket.open_websocket_url(balancer.ws_url("inference", "/api/v1/inference_socket")) as socket:
        await socket.send_message(ws_request("big", max_tokens=MAX_TOKENS + 1))
        error = json.loads(await socket.get_message())["Error"]
        assert error["request_id"] == "big"
        assert error["error"]["code"] == 400
        assert f"limit of {MAX_TOKENS}" in error["error"]["description"]
        # No agent: these wait in the buffer, in flight, for 3 s.
        for number in range(IN_FLIGHT):
            await socket.send_message(ws_request(f"waiting-{number}"))
        await socket.send_message(ws_request("one-too-many"))
        with trio.fail_after(2):
            error = json.loads(await socket.get_message())["Error"]
        assert error["request_id"] == "one-too-many"
        assert error["error"]["code"] == 429
        assert f"limit {IN_FLIGHT}" in error["error"]["description"]


async def test_websocket_message_beyond_the_limit_closes_with_1009(balancer: SecuredBalancer) -> None:
    async with trio_websocket.open_websocket_url(balancer.ws_url("inference", "/api/v1/inference_socket")) as socket:
        await socket.send_message(ws_request("huge", prompt="x" * MAX_WS_MESSAGE))
        with pytest.raises(trio_websocket.ConnectionClosed) as closed:
            with trio.fail_after(5):
                await socket.get_message()
        assert closed.value.reason.code == 1009
    # The balancer serves the next client as before.
    async with trio_websocket.open_websocket_url(balancer.ws_url("inference", "/api/v1/inference_socket")) as socket:
        await socket.send_message(ws_request("big", max_tokens=MAX_TOKENS + 1))
        assert "big" in await socket.get_message()


def test_limit_refusals_are_logged_once_per_client(balancer: SecuredBalancer) -> None:
    for _ in range(20):
        httpx.post(f"{balancer.url('inference')}/api/v1/continue_from_raw_prompt", json={"raw_prompt": "", "max_tokens": 10**5})
    assert len(refusal_lines(balancer.process.log(), "inference", "max_tokens")) == 1
