"""Desired states and requests for the integration tests of model swaps and model sources."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from tests.integration.cluster import (
    DETERMINISTIC_PARAMETERS,
    Cluster,
    ndjson_lines,
    wait_until,
)

DESIRED = "/api/v1/balancer_desired_state"


def desired_state(
    model: Any, *, override: str | None = None, use_override: bool | None = None, **parameters: Any
) -> dict[str, Any]:
    """`model`: a Path/str (LocalToAgent), a ready model source dict, or None ("None")."""
    if isinstance(model, (str, Path)):
        model = {"LocalToAgent": str(model)}
    return {
        "chat_template_override": {"content": override} if override is not None else None,
        "inference_parameters": {**DETERMINISTIC_PARAMETERS, **parameters},
        "model": "None" if model is None else model,
        "multimodal_projection": "None",
        "use_chat_template_override": override is not None if use_override is None else use_override,
    }


def put_state(cluster: Cluster, state: dict[str, Any]) -> httpx.Response:
    return httpx.put(f"{cluster.management_url}{DESIRED}", json=state, timeout=10)


def wait_for_agent(cluster: Cluster, name: str, condition: Any, what: str, timeout: float = 60) -> dict[str, Any]:
    def matching() -> dict[str, Any] | None:
        agent = cluster.agent_named(name)
        return agent if agent is not None and condition(agent) else None

    return wait_until(matching, timeout, what)


def applied_with(model_path: str | Path) -> Any:
    return lambda agent: (
        agent["model_path"] == str(model_path)
        and agent["state_application_status"] == "Applied"
        and agent["slots_total"] > 0
    )


def loads_logged(cluster: Cluster, name: str) -> int:
    return cluster.agents[name].log().count(" loaded with ")


def raw_prompt(cluster: Cluster, prompt: str, max_tokens: int, timeout: float = 120) -> list[dict[str, Any]]:
    response = httpx.post(
        f"{cluster.inference_url}/api/v1/continue_from_raw_prompt",
        json={"raw_prompt": prompt, "max_tokens": max_tokens},
        timeout=timeout,
    )
    response.raise_for_status()
    return ndjson_lines(response)


def conversation(cluster: Cluster, content: str, max_tokens: int, timeout: float = 120) -> list[dict[str, Any]]:
    response = httpx.post(
        f"{cluster.inference_url}/api/v1/continue_from_conversation_history",
        json={
            "add_generation_prompt": True,
            "conversation_history": [{"role": "user", "content": content}],
            "enable_thinking": False,
            "max_tokens": max_tokens,
        },
        timeout=timeout,
    )
    response.raise_for_status()
    return ndjson_lines(response)


def generated(line: dict[str, Any]) -> dict[str, Any]:
    return line.get("Response", {}).get("response", {}).get("GeneratedToken", {})


def text_of(lines: list[dict[str, Any]]) -> str:
    return "".join(generated(line).get("ContentToken", "") for line in lines)


def is_done(lines: list[dict[str, Any]]) -> bool:
    return bool(lines) and "Done" in generated(lines[-1])


def describe(lines: list[dict[str, Any]]) -> str:
    return json.dumps(lines[-3:])[:600]
