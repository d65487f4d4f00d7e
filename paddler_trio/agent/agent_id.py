"""The agent's id on the balancer: generated once per process, reused across reconnects."""

from __future__ import annotations

import secrets

# nanoid's default alphabet and length: 21 URL-safe characters, about 126 bits.
_ALPHABET = "_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_LENGTH = 21


def new_agent_id() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(_LENGTH))
