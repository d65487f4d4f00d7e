"""Paddler's official Python client (`paddler-client` on PyPI, asyncio) against our balancer.

The client runs its own asyncio loop in a worker thread and talks to the Trio balancer over
loopback, exactly as an application would.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import trio

from tests.proxy.balancer_harness import running_balancer

paddler_client = pytest.importorskip("paddler_client")

from paddler_client import ClientInference, ClientManagement  # noqa: E402
from paddler_client.balancer_desired_state import BalancerDesiredState  # noqa: E402
from paddler_client.continue_from_conversation_history_params import (  # noqa: E402
    ContinueFromConversationHistoryParams,
)
from paddler_client.continue_from_raw_prompt_params import ContinueFromRawPromptParams  # noqa: E402
from paddler_client.conversation_message import ConversationMessage  # noqa: E402
from paddler_client.embedding_input_document import EmbeddingInputDocument  # noqa: E402
from paddler_client.embedding_normalization_method import EmbeddingNormalizationMethod  # noqa: E402
from paddler_client.generate_embedding_batch_params import GenerateEmbeddingBatchParams  # noqa: E402
from paddler_client.inference_parameters import InferenceParameters  # noqa: E402


async def _management_session(url: str, agent_id: str) -> dict[str, Any]:
    async with ClientManagement(url) as management:
        agents = await management.get_agents()
        desired = await management.get_balancer_desired_state()
        await management.put_balancer_desired_state(
            desired.model_copy(update={"inference_parameters": InferenceParameters(temperature=0.1)})
        )
        stored = await management.get_balancer_desired_state()
        stream = management.agents_stream()
        first_snapshot = await anext(stream)
        await stream.aclose()
        buffered = management.buffered_requests_stream()
        first_buffered = await anext(buffered)
        await buffered.aclose()
        return {
            "health": await management.get_health(),
            "agent_names": [agent.name for agent in agents.agents],
            "temperature": stored.inference_parameters.temperature,
            "streamed_ids": [agent.id for agent in first_snapshot.agents],
            "buffered": (await management.get_buffered_requests()).buffered_requests_current,
            "first_buffered": first_buffered.buffered_requests_current,
            "metadata": (await management.get_model_metadata(agent_id)).metadata,
            "template": await management.get_chat_template_override(agent_id),
            "metrics": await management.get_metrics(),
        }


async def _inference_session(url: str) -> dict[str, Any]:
    async with ClientInference(url, socket_pool_size=2) as inference:
        conversation = ContinueFromConversationHistoryParams(
            add_generation_prompt=True,
            conversation_history=[ConversationMessage(role="user", content="Hi")],
            enable_thinking=False,
            max_tokens=8,
        )
        ndjson = [message async for message in inference.post_continue_from_conversation_history(conversation)]
        over_socket = [message async for message in await inference.continue_from_conversation_history(conversation)]
        raw = [
            message
            async for message in await inference.continue_from_raw_prompt(
                ContinueFromRawPromptParams(raw_prompt="Hi", max_tokens=8)
            )
        ]
        return {
            "health": await inference.get_health(),
            "ndjson": ndjson,
            "socket": over_socket,
            "raw": raw,
        }


async def _embedding_session(management_url: str, inference_url: str) -> list[Any]:
    async with ClientManagement(management_url) as management:
        await management.put_balancer_desired_state(
            BalancerDesiredState(inference_parameters=InferenceParameters(enable_embeddings=True))
        )
    async with ClientInference(inference_url) as inference:
        params = GenerateEmbeddingBatchParams(
            input_batch=[EmbeddingInputDocument(id=f"d{i}", content="text") for i in range(3)],
            normalization_method=EmbeddingNormalizationMethod(variant="L2"),
        )
        return [message async for message in inference.generate_embedding_batch(params)]


def _tokens(messages: list[Any]) -> str:
    return "".join(message.token or "" for message in messages if message.is_token)


async def test_the_official_client_works_against_the_balancer() -> None:
    async with running_balancer() as balancer:
        await balancer.add_agent(name="gpu-1", agent_id="agent-1", slots=2)

        management = await trio.to_thread.run_sync(asyncio.run, _management_session(balancer.management, "agent-1"))
        assert management["health"] == "OK"
        assert management["agent_names"] == ["gpu-1"]
        assert management["temperature"] == pytest.approx(0.1)
        assert management["streamed_ids"] == ["agent-1"]
        assert management["buffered"] == management["first_buffered"] == 0
        assert management["metadata"] == {"general.architecture": "scripted-fake"}
        assert management["template"] is None
        assert "paddler_slots_total 2" in management["metrics"]

        inference = await trio.to_thread.run_sync(asyncio.run, _inference_session(balancer.inference))
        assert inference["health"] == "OK"
        for key in ("ndjson", "socket", "raw"):
            messages = inference[key]
            assert _tokens(messages) == "Hello, world", key
            assert messages[-1].is_done and messages[-1].summary.usage.content_tokens == 3
            assert {message.generated_by for message in messages} == {"gpu-1"}

        embeddings = await trio.to_thread.run_sync(
            asyncio.run, _embedding_session(balancer.management, balancer.inference)
        )
        produced = [message for message in embeddings if message.embedding_data is not None]
        assert sorted(message.embedding_data.source_document_id for message in produced) == ["d0", "d1", "d2"]
        assert embeddings[-1].kind.value == "embedding_done"
