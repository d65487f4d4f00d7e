"""Value parsers and help shared by the subcommands: Paddler's millisecond durations, host:port."""

from __future__ import annotations

import argparse
import socket

import attrs

# After the first SIGINT/SIGTERM, how long requests in flight may take to finish (every role's
# --shutdown-grace-period): inside Kubernetes' default 30 s termination grace, with time left
# to deregister and exit.
DEFAULT_SHUTDOWN_GRACE_PERIOD = 25.0

# `paddler agent` and `paddler quickstart` both load models (paddler_trio/engine/amx_guard.py).
ALLOW_AMX_HELP = (
    "when llama.cpp was built with AMX (Intel Sapphire Rapids and newer, -march=native), still load "
    "weights into its AMX buffers; without this flag they stay in plain CPU buffers, because llama.cpp's "
    "AMX matrix multiplication crashes the process on many Linux systems"
)


@attrs.frozen
class SocketAddress:
    """`host:port` as the user wrote it (what dashboards display) plus its parts."""

    text: str
    host: str
    port: int

    def __str__(self) -> str:
        return self.text


def socket_address(text: str) -> SocketAddress:
    host, separator, port_text = text.rpartition(":")
    if not separator or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (e.g. 127.0.0.1:8060), got {text!r}")
    host = host.strip("[]")
    try:
        socket.getaddrinfo(host, int(port_text))
    except socket.gaierror as error:
        raise argparse.ArgumentTypeError(f"cannot resolve host {host!r}: {error.strerror}") from error
    return SocketAddress(text=text, host=host, port=int(port_text))


def milliseconds(text: str) -> float:
    """A duration given in integer milliseconds, returned in seconds."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a duration in whole milliseconds (e.g. 1500), got {text!r}")
    return int(text) / 1000.0


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value
