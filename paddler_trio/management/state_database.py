"""Where the balancer's desired state lives (`--state-database`, spec 4.2).

`memory://` (or any `memory:` URL) keeps it in memory, starting from the default state.
`file:///absolute/path.json` persistence is not implemented yet and is refused at start-up.
"""

from __future__ import annotations

import os

import trio

from paddler_trio.protocol import BalancerDesiredState


class StateDatabaseError(Exception):
    """A `--state-database` value this balancer cannot use; the message says why."""


class MemoryStateDatabase:
    """The desired state, kept until the process ends; every store wakes `wait_stored`."""

    def __init__(self) -> None:
        self._state = BalancerDesiredState.default()
        self._stored = trio.Event()
        self.version = 0

    async def read(self) -> BalancerDesiredState:
        return self._state

    async def store(self, state: BalancerDesiredState) -> None:
        self._state = state
        self.version += 1
        self._stored.set()
        self._stored = trio.Event()

    async def wait_stored(self, seen_version: int) -> int:
        while self.version == seen_version:
            await self._stored.wait()
        return self.version


def open_state_database(url: str) -> MemoryStateDatabase:
    scheme, _, rest = url.partition(":")
    if scheme == "memory":
        return MemoryStateDatabase()
    if scheme == "file":
        path = rest.removeprefix("//")
        if not os.path.isabs(path):
            raise StateDatabaseError(
                f"state database path must be absolute, got {url!r}; "
                f"did you mean file://{os.path.abspath(path)} ?"
            )
        raise StateDatabaseError(
            f"file:// state databases are not supported yet ({url}); use memory:// for now"
        )
    raise StateDatabaseError(
        f"unsupported state database {url!r}: expected memory:// or file:///absolute/path.json"
    )
