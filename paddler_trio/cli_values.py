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


# `paddler agent` and `paddler quickstart`: host memory for the conversations an agent keeps beyond
# its slots (paddler_trio/engine/state_cache.py). Sized for a small machine; llama-server's
# --cache-ram defaults to 8192.
DEFAULT_CACHE_RAM_MIB = 1024
CACHE_RAM_MIB_HELP = (
    "host memory, in MiB, for the prompt state cache: when a slot is reused, the conversation it held is "
    "saved there, and a later request that continues it is restored instead of prefilled; the least "
    f"recently used states go first (default: {DEFAULT_CACHE_RAM_MIB}; 0 turns the cache off)"
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


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value
