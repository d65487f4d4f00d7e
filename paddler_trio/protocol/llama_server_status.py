"""What an agent watching a llama-server reports about it beyond slots and issues (ours, not Paddler's)."""

from __future__ import annotations

import attrs


@attrs.frozen(kw_only=True)
class LlamaServerStatus:
    """``external_llamacpp_addr``: where the balancer reaches that llama-server (``host:port``,
    an IPv6 host in brackets). ``model_name``: the name llama-server gives its model (``/props``'
    ``model_alias``, else ``/v1/models``' first id), what an OpenAI client sends as ``model``;
    None while unknown."""

    external_llamacpp_addr: str
    model_name: str | None = None
