"""schemathesis against a real balancer with a real agent (Gemma), driven by the services' own
`/openapi.json` (inference, management and OpenAI services): valid and invalid inputs on every HTTP route, no 500 (other 5xx only where Paddler answers
them and the schema says so), no hang, every error
with the body its document names (Paddler's plain text, or JSON). `max_tokens` is bounded by --max-tokens-limit (and so by the schema) to keep
generations short. Streams without an end (SSE), WebSocket upgrades and the desired-state PUT
(which would swap the model under the run) are left out."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    status_code_conformance,
)

from tests.integration.cluster import DETERMINISTIC_PARAMETERS, wait_until
from tests.security.balancer_processes import SecuredBalancer, secured_balancer, spawn

KEY = "fuzz-key"
MANAGEMENT_KEY = "fuzz-management-key"
EXAMPLES_PER_OPERATION = 15
SKIPPED = ("/stream", "_socket", "PUT ")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, gemma_model_path) -> Iterator[SecuredBalancer]:
    directory = tmp_path_factory.mktemp("schemathesis")
    with secured_balancer(
        directory,
        "--inference-api-key", KEY,
        "--management-api-key", MANAGEMENT_KEY,
        "--max-tokens-limit", "4",
        "--buffered-request-timeout", "5000",
    ) as balancer:  # fmt: skip
        agent = spawn(
            directory, "agent", ["agent", "--management-addr", balancer.management_addr, "--slots", "2", "--threads", "2", "--name", "fuzz"]
        )
        headers = {"Authorization": f"Bearer {MANAGEMENT_KEY}"}
        try:
            state = {
                "chat_template_override": None,
                "inference_parameters": {**DETERMINISTIC_PARAMETERS, "context_size": 1024},
                "model": {"LocalToAgent": str(gemma_model_path)},
                "multimodal_projection": "None",
                "use_chat_template_override": False,
            }
            management = balancer.url("management")
            httpx.put(f"{management}/api/v1/balancer_desired_state", json=state, headers=headers).raise_for_status()
            wait_until(
                lambda: any(a["slots_total"] > 0 for a in httpx.get(f"{management}/api/v1/agents", headers=headers).json()["agents"]),
                90,
                "the agent to load Gemma",
            )
            yield balancer
        finally:
            agent.stop()


def no_unexpected_server_error(ctx, response, case) -> bool | None:
    """500 is a bug; 501/503/504 are Paddler's deliberate answers (spec 2.4), checked against the schema."""
    assert response.status_code != 500, f"500: {response.text[:300]!r}"
    return None


def errors_say_what_went_wrong(ctx, response, case) -> bool | None:
    """An error has a description: Paddler's plain text, or a JSON `error` for our additions and
    the OpenAI service (which content type where is `content_type_conformance`'s check)."""
    if response.status_code < 400:
        return None
    content_type = ";".join(response.headers.get("content-type", []))  # schemathesis keeps every value
    if content_type.startswith("application/json"):
        try:
            assert json.loads(response.text)["error"], response.text[:200]
        except (ValueError, KeyError, TypeError):
            raise AssertionError(f"{response.status_code} without a JSON error: {response.text[:200]!r}") from None
    else:
        assert response.text.strip(), f"{response.status_code} with an empty body"
    return None


def _fuzz(balancer: SecuredBalancer, service: str, key: str, examples: int = EXAMPLES_PER_OPERATION) -> list[str]:
    base_url = balancer.url(service)
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    fuzzed = []
    for result in schema.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        if any(skip in label for skip in SKIPPED):
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def run(case) -> None:
                # A new connection per call: the management and OpenAI services close a kept-alive
                # connection after 5 s idle, and a call sent on one just being closed fails.
                headers = {"Authorization": f"Bearer {key}", "Connection": "close"}
                response = case.call(base_url=base_url, headers=headers, timeout=60)
                case.validate_response(
                    response,
                    checks=[status_code_conformance, content_type_conformance],
                    additional_checks=[no_unexpected_server_error, errors_say_what_went_wrong],
                )

            try:
                run()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE, label  # nothing to get wrong in a route without input
        fuzzed.append(label)
    return fuzzed


def test_inference_service(cluster: SecuredBalancer) -> None:
    fuzzed = _fuzz(cluster, "inference", KEY)
    assert "POST /api/v1/continue_from_raw_prompt" in fuzzed


def test_management_service(cluster: SecuredBalancer) -> None:
    fuzzed = _fuzz(cluster, "management", MANAGEMENT_KEY)
    assert "GET /api/v1/agents" in fuzzed


def test_openai_service(cluster: SecuredBalancer) -> None:
    # Fewer: each valid OpenAI call generates (prompts of any length are prefilled on the CPU).
    fuzzed = _fuzz(cluster, "openai", KEY, examples=8)
    assert "POST /v1/chat/completions" in fuzzed
