"""The agent join secret: only an agent that sends the balancer's --agent-secret is registered;
others are refused before the socket is accepted, say why, and keep retrying."""

from __future__ import annotations

import httpx
import pytest
import trio_websocket

from tests.integration.cluster import wait_until
from tests.security.balancer_processes import secured_balancer, spawn

SECRET = "agent-join-secret"
MANAGEMENT_KEY = "management-key"
REFUSED_MESSAGE = "the balancer refused this agent: wrong or missing --agent-secret"


def agent_arguments(management_addr: str, name: str, *flags: str) -> list[str]:
    return ["agent", "--management-addr", management_addr, "--name", name, "--slots", "1", "--threads", "1", *flags]


def test_only_agents_with_the_secret_join(tmp_path) -> None:
    secret_file = tmp_path / "agent-secret"
    secret_file.write_text(SECRET + "\n")
    with secured_balancer(
        tmp_path, "--agent-secret-file", str(secret_file), "--management-api-key", MANAGEMENT_KEY
    ) as balancer:
        agents = [
            spawn(tmp_path, "agent-none", agent_arguments(balancer.management_addr, "none")),
            spawn(tmp_path, "agent-wrong", agent_arguments(balancer.management_addr, "wrong", "--agent-secret", "guess")),
            # The management key is not the agent secret.
            spawn(tmp_path, "agent-key", agent_arguments(balancer.management_addr, "key", "--agent-secret", MANAGEMENT_KEY)),
            spawn(
                tmp_path,
                "agent-right",
                agent_arguments(balancer.management_addr, "right"),
                environment={"PADDLER_AGENT_SECRET": SECRET},
            ),
        ]
        try:

            def names() -> set[str]:
                response = httpx.get(
                    f"{balancer.url('management')}/api/v1/agents", headers={"Authorization": f"Bearer {MANAGEMENT_KEY}"}
                )
                return {agent["name"] for agent in response.json()["agents"]}

            wait_until(lambda: "right" in names(), 30, "the agent with the secret to join")
            for refused in agents[:3]:
                wait_until(lambda refused=refused: REFUSED_MESSAGE in refused.log(), 30, f"{refused.name} to report the refusal")
                assert refused.process.poll() is None, "a refused agent keeps retrying"
            assert names() == {"right"}
            assert SECRET not in balancer.process.log()
        finally:
            for agent in agents:
                agent.stop()


async def test_agent_socket_upgrade_is_refused_before_accepting(tmp_path) -> None:
    with secured_balancer(tmp_path, "--agent-secret", SECRET, "--management-api-key", MANAGEMENT_KEY) as balancer:
        url = balancer.ws_url("management", "/api/v1/agent_socket/stranger")
        for headers in ([], [("Authorization", "Bearer nope")], [("Authorization", f"Bearer {MANAGEMENT_KEY}")]):
            with pytest.raises(trio_websocket.ConnectionRejected) as rejection:
                async with trio_websocket.open_websocket_url(url, extra_headers=headers):
                    pass
            assert rejection.value.status_code == 401
        async with trio_websocket.open_websocket_url(url, extra_headers=[("Authorization", f"Bearer {SECRET}")]) as socket:
            assert "Version" in await socket.get_message()
