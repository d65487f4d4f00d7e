"""Everything that guards one of the balancer's HTTP apps, applied in one call: its API keys
(`api_keys.py`) and its request limits (`request_limits.py`). TLS and the WebSocket message
limit belong to the server, not the app: see `nursery/balancer.py`."""

from __future__ import annotations

from collections.abc import Mapping

from quart_trio import QuartTrio

from paddler_trio.balancer_config import BalancerConfig
from paddler_trio.management.agent_socket import AGENT_SOCKET_PATH_PREFIX
from paddler_trio.security.api_keys import ApiKeys, require_bearer_key
from paddler_trio.security.error_shapes import ErrorShape, native_error
from paddler_trio.security.request_limits import limit_requests


def protect_service(
    app: QuartTrio,
    config: BalancerConfig,
    *,
    service: str,
    keys: tuple[str, ...],
    error_shape: ErrorShape = native_error,
    keys_by_path_prefix: Mapping[str, ApiKeys] | None = None,
) -> QuartTrio:
    # Keys first: an unauthenticated request is refused before its body is read.
    require_bearer_key(
        app, ApiKeys.of(keys), service=service, error_shape=error_shape, keys_by_path_prefix=keys_by_path_prefix
    )
    limit_requests(
        app,
        service=service,
        max_body_bytes=config.max_request_body_bytes,
        max_tokens_limit=config.max_tokens_limit,
        error_shape=error_shape,
    )
    return app


def agent_socket_keys(config: BalancerConfig) -> dict[str, ApiKeys]:
    """The agent socket takes the agent join secret instead of the management keys."""
    return {AGENT_SOCKET_PATH_PREFIX: agent_secret_keys(config)}


def agent_secret_keys(config: BalancerConfig) -> ApiKeys:
    return ApiKeys.of([config.agent_secret] if config.agent_secret else [])
