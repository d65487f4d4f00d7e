"""TLS on the agent's side of the agent socket (the balancer's side is Hypercorn's `certfile`/`keyfile`)."""

from __future__ import annotations

import ssl
from pathlib import Path


def client_ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    """The system's trusted CAs, plus `ca_file` (e.g. the CA of a self-signed balancer certificate)."""
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    return context
