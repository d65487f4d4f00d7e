"""TLS contexts: the agent's side of the agent socket, and the inference port's server side
(Hypercorn makes its own for the other ports from the same `--tls-certfile`/`--tls-keyfile`)."""

from __future__ import annotations

import ssl
from pathlib import Path


def client_ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    """The system's trusted CAs, plus `ca_file` (e.g. the CA of a self-signed balancer certificate)."""
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    return context


def server_ssl_context(certfile: Path, keyfile: Path | None) -> ssl.SSLContext:
    """TLS 1.2 or later with the certificate chain in `certfile`, offering HTTP/1.1 by ALPN."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=str(certfile), keyfile=None if keyfile is None else str(keyfile))
    context.set_alpn_protocols(["http/1.1"])
    return context
