"""Where the balancer's desired state lives (`--state-database`, spec 4.2).

`memory://` (or any `memory:` URL) keeps it in memory, starting from the default state.
`file:///absolute/path.json` keeps it in a JSON file in Paddler's format
(`{"balancer_desired_state": {...}, "version": "1"}`, pretty-printed): read once at start-up
(created with the default state when missing or empty), rewritten atomically on every store.
A file that does not parse is refused at start-up, never replaced.
`etcd://HOST:PORT[,HOST:PORT...]/PREFIX` keeps it in etcd, shared by every balancer that names
the same etcd and prefix (`etcd_state_database.py`).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import trio

from paddler_trio.protocol import (
    BalancerDesiredState,
    WireFormatError,
    structure,
    unstructure,
)

_logger = logging.getLogger(__name__)

FILE_FORMAT_VERSION = "1"


class StateDatabaseError(Exception):
    """A `--state-database` value this balancer cannot use; the message says why."""


class StateDatabaseUnavailable(Exception):
    """The state database cannot be written now (a remote store is unreachable); nothing was changed."""


class MemoryStateDatabase:
    """The desired state, kept until the process ends; every store wakes `wait_stored`."""

    def __init__(self, initial: BalancerDesiredState | None = None) -> None:
        self._state = initial if initial is not None else BalancerDesiredState.default()
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

    @property
    def reachable(self) -> bool | None:
        """Whether the remote store is reachable now; None when there is none (this process holds the state)."""
        return None

    async def keep_current(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run by the balancer's nursery before anything reads the state. Here, nothing to do: only this
        process changes the state. A shared store reads it first and follows the others' changes."""
        task_status.started()


class FileStateDatabase(MemoryStateDatabase):
    """The in-memory state of `MemoryStateDatabase`, persisted to `path` before every store
    takes effect: a store that cannot be written raises `OSError` and changes nothing."""

    def __init__(self, path: Path, initial: BalancerDesiredState) -> None:
        super().__init__(initial)
        self.path = path
        self._writing = trio.Lock()  # renames land in the order the stores were made

    @classmethod
    def open(cls, path: Path) -> FileStateDatabase:
        """Read `path`, or create it with the default state; `StateDatabaseError` says what is wrong and where."""
        directory = path.parent
        if not directory.is_dir():
            raise StateDatabaseError(f"cannot use state database {path}: directory {directory} does not exist")
        if path.exists() and not path.is_file():
            raise StateDatabaseError(f"cannot use state database {path}: it is not a regular file")
        try:
            text = path.read_text(encoding="utf-8") if path.exists() else ""
        except (OSError, UnicodeDecodeError) as error:
            raise StateDatabaseError(f"cannot read state database {path}: {error}") from None
        try:
            _probe_writable(directory)
        except OSError as error:
            raise StateDatabaseError(
                f"cannot use state database {path}: directory {directory} is not writable ({error.strerror or error})"
            ) from None
        if not text.strip():
            state = BalancerDesiredState.default()
            try:
                write_state_file(path, state)
            except OSError as error:
                raise StateDatabaseError(f"cannot create state database {path}: {error}") from None
            _logger.info("created state database %s with the default desired state", path)
        else:
            state = parse_state_file(text, path)
            _logger.info("desired state read from %s", path)
        return cls(path, state)

    async def store(self, state: BalancerDesiredState) -> None:
        async with self._writing:
            await trio.to_thread.run_sync(write_state_file, self.path, state)
            await super().store(state)


def parse_state_file(text: str, path: Path) -> BalancerDesiredState:
    """The desired state in a state database file's text; `StateDatabaseError` names the line/column or field."""
    return parse_state_document(text, f"state database {path}", "fix or remove the file (it is never replaced automatically)")


def parse_state_document(text: str, source: str, remedy: str) -> BalancerDesiredState:
    """The desired state in Paddler's state document (`{"balancer_desired_state": ..., "version": "1"}`);
    `StateDatabaseError` names `source`, the line/column or field, and what to do about it (`remedy`)."""
    try:
        document: Any = json.loads(text)
    except json.JSONDecodeError as error:
        raise StateDatabaseError(
            f"{source} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}); {remedy}"
        ) from None

    def corrupt(what: str) -> StateDatabaseError:
        return StateDatabaseError(f"{source} does not hold a valid desired state: {what}; {remedy}")

    if not isinstance(document, dict):
        raise corrupt("expected a JSON object with balancer_desired_state and version")
    unknown = sorted(set(document) - {"balancer_desired_state", "version"})
    if unknown:
        raise corrupt(f"unknown field(s) {', '.join(repr(name) for name in unknown)}")
    if "balancer_desired_state" not in document:
        raise corrupt("missing field 'balancer_desired_state'")
    if document.get("version") != FILE_FORMAT_VERSION:
        raise corrupt(f"field 'version' must be {FILE_FORMAT_VERSION!r}, got {document.get('version')!r}")
    try:
        state = structure(document["balancer_desired_state"], BalancerDesiredState)
    except WireFormatError as error:
        raise corrupt(f"in balancer_desired_state: {error}") from None
    problems = state.inference_parameters.validate()
    if problems:
        raise corrupt("invalid inference parameters: " + "; ".join(problems))
    return state


def state_document(state: BalancerDesiredState) -> str:
    """`state` as Paddler's state document, pretty-printed (what a file, or an etcd key, holds)."""
    document = {"balancer_desired_state": unstructure(state), "version": FILE_FORMAT_VERSION}
    return json.dumps(document, indent=2, ensure_ascii=False)


def write_state_file(path: Path, state: BalancerDesiredState) -> None:
    """Replace `path` atomically: write a temporary file beside it, fsync, rename, fsync the directory."""
    text = state_document(state)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _probe_writable(directory: Path) -> None:
    descriptor, probe = tempfile.mkstemp(prefix=".paddler-probe.", dir=directory)
    os.close(descriptor)
    os.unlink(probe)


def open_state_database(url: str) -> MemoryStateDatabase:
    scheme, _, rest = url.partition(":")
    if scheme == "memory":
        return MemoryStateDatabase()
    if scheme == "file":
        path = rest.removeprefix("//")
        if not path:
            raise StateDatabaseError(f"state database {url!r} names no file: expected file:///absolute/path.json")
        if not os.path.isabs(path):
            raise StateDatabaseError(
                f"state database path must be absolute, got {url!r}; "
                f"did you mean file://{os.path.abspath(path)} ?"
            )
        return FileStateDatabase.open(Path(path))
    if scheme == "etcd":
        from paddler_trio.management.etcd_state_database import EtcdStateDatabase  # it builds on this module

        return EtcdStateDatabase.open(url)
    raise StateDatabaseError(
        f"unsupported state database {url!r}: expected memory://, file:///absolute/path.json "
        "or etcd://HOST:PORT[,HOST:PORT...]/PREFIX"
    )
