"""`BalancerEndpoint`: what the agent connects to, and the Host and target it asks for, from
the balancer's `ws://` or `wss://` URL (IPv6 addresses included)."""

from __future__ import annotations

import pytest

from paddler_trio.agent.management_link import BalancerEndpoint


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "ws://127.0.0.1:8085/api/v1/agent_socket/a-1",
            BalancerEndpoint("127.0.0.1", 8085, "127.0.0.1:8085", "/api/v1/agent_socket/a-1", tls=False),
        ),
        (
            "ws://[::1]:8085/api/v1/agent_socket/a-1",
            BalancerEndpoint("::1", 8085, "[::1]:8085", "/api/v1/agent_socket/a-1", tls=False),
        ),
        (
            "wss://balancer.example/api/v1/agent_socket/a-1?x=1",
            BalancerEndpoint("balancer.example", 443, "balancer.example", "/api/v1/agent_socket/a-1?x=1", tls=True),
        ),
    ],
)
def test_a_balancer_url_gives_the_address_host_header_and_target(url: str, expected: BalancerEndpoint) -> None:
    assert BalancerEndpoint.of_url(url) == expected


@pytest.mark.parametrize("url", ["http://127.0.0.1:8085/", "ws:///no-host"])
def test_a_url_that_is_not_a_websocket_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="not a WebSocket URL"):
        BalancerEndpoint.of_url(url)
