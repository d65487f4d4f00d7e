"""Balancer-made request ids: 21 URL-safe characters, like Paddler's nanoids."""

from __future__ import annotations

import secrets


def new_request_id() -> str:
    return secrets.token_urlsafe(16)[:21]
