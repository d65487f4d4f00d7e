"""Requests to a Paddler 4.x agent (a scripted fake agent as strict as Paddler's: it does not offer
our request extensions and drops, unanswered, a request with a field it does not know) go in
Paddler's own shape; one that needs an extension is refused at once with a 400. Our agents
(which offer the extensions) still get every field. Real balancer, scripted fake agents."""

from __future__ import annotations

from typing import Any

from paddler_trio.protocol import CalledFunction, ConversationMessage, MessageToolCall
from tests.proxy.balancer_harness import content_of, errors_of, running_balancer

RAW = "/api/v1/continue_from_raw_prompt"
CONVERSATION = "/api/v1/continue_from_conversation_history"

TOOL_CALL = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}


def conversation(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "add_generation_prompt": True,
        "conversation_history": list(messages) or [{"role": "user", "content": "Hi"}],
        "enable_thinking": False,
        "max_tokens": 5,
        **fields,
    }


async def test_a_plain_request_reaches_a_paddler_agent_and_completes() -> None:
    async with running_balancer() as balancer:
        agent = await balancer.add_agent(as_paddler=True)
        raw = await balancer.post_ndjson(RAW, {"raw_prompt": "Hi", "max_tokens": 4, "stop": []})
        chat = await balancer.post_ndjson(CONVERSATION, conversation())
        assert content_of(raw) == content_of(chat) == "Hello, world"
        assert agent.dropped == []
        assert [envelope.request.stop for envelope in agent.requests] == [None, None]


async def test_a_per_request_temperature_is_refused_at_once_for_a_paddler_agent() -> None:
    async with running_balancer() as balancer:
        agent = await balancer.add_agent(as_paddler=True, name="paddler-1")
        messages = await balancer.post_ndjson(RAW, {"raw_prompt": "Hi", "max_tokens": 4, "temperature": 0.2})
        assert errors_of(messages) == [
            (
                400,
                f"Agent paddler-1 (id {agent.agent_id}) is a Paddler agent, which does not accept these request "
                "fields: temperature. Send the request without them.",
            )
        ]
        assert agent.requests == [] and agent.dropped == []
        assert await balancer.slots_processing() == 0


async def test_tool_call_history_and_stop_strings_are_refused_for_a_paddler_agent() -> None:
    async with running_balancer() as balancer:
        agent = await balancer.add_agent(as_paddler=True)
        body = conversation(
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "", "tool_calls": [TOOL_CALL]},
            {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
            stop=["END"],
        )
        [(code, description)] = errors_of(await balancer.post_ndjson(CONVERSATION, body))
        assert code == 400
        assert f"Agent {agent.agent_id} is a Paddler agent" in description
        assert "stop, conversation_history[1].tool_calls, conversation_history[2].tool_call_id." in description
        assert agent.requests == [] and agent.dropped == []


async def test_our_agent_receives_the_extension_fields_unchanged() -> None:
    async with running_balancer() as balancer:
        agent = await balancer.add_agent()
        body = conversation(
            {"role": "user", "content": "Weather?", "name": "ada"},
            {"role": "assistant", "content": "", "tool_calls": [TOOL_CALL]},
            {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
            temperature=0.2,
            top_p=0.9,
            top_k=40,
            min_p=0.1,
            seed=7,
            stop=["END"],
        )
        assert content_of(await balancer.post_ndjson(CONVERSATION, body)) == "Hello, world"
        forwarded = agent.requests[0].request
        assert (forwarded.temperature, forwarded.top_p, forwarded.top_k, forwarded.min_p, forwarded.seed, forwarded.stop) == (
            0.2,
            0.9,
            40,
            0.1,
            7,
            ("END",),
        )
        assert forwarded.conversation_history == (
            ConversationMessage(role="user", content="Weather?", name="ada"),
            ConversationMessage(
                role="assistant",
                content="",
                tool_calls=(MessageToolCall(id="c1", function=CalledFunction(name="weather", arguments="{}")),),
            ),
            ConversationMessage(role="tool", content="sunny", tool_call_id="c1"),
        )
