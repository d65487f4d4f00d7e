"""SIGINT and SIGTERM, the same way for every role (`balancer`, `agent`, `quickstart`, `dashboard`).

The first signal asks the role to stop: each drains in its own way (an agent lets its
in-flight requests finish, the balancer its streams, within `--shutdown-grace-period`) and the
process exits 0. A second signal while it drains ends the process at once with the shell's code
for that signal (130 for SIGINT, 143 for SIGTERM) and no traceback: `ExitNow` unwinds every
nursery (cancellation, so cleanup that is not shielded is skipped) and `run_until_stopped` turns
it into the exit code. Only work that cannot be interrupted is waited for: a llama.cpp call under
way (one decode step, or a model load).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable

import trio

_logger = logging.getLogger(__name__)


class ExitNow(BaseException):
    """A second stop signal: unwind everything and exit with `code`. A BaseException, like
    KeyboardInterrupt, so that no `except Exception` on the way takes it for a failure."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def exit_code_for(received: int) -> int:
    """What a shell reports for a process ended by this signal: 128 + its number."""
    return 128 + received


async def stop_on_signals(stop: Callable[[], None], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Run in a role's root nursery: the first SIGINT/SIGTERM calls `stop`, a second raises `ExitNow`."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        stopping = False
        async for received in signals:
            name = signal.Signals(received).name
            if stopping:
                _logger.warning("%s again while shutting down: exiting now", name)
                raise ExitNow(exit_code_for(received))
            stopping = True
            _logger.info("%s received: shutting down (send it again to exit at once)", name)
            stop()


async def serve_until_signalled(
    serve: Callable[..., Awaitable[None]], config: object, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run `serve(config, stop, task_status=...)` (an agent role) until it returns; the first
    SIGINT/SIGTERM sets `stop`, and the role drains and returns."""
    stop = trio.Event()
    async with trio.open_nursery() as root:
        await root.start(stop_on_signals, stop.set)
        await serve(config, stop, task_status=task_status)
        root.cancel_scope.cancel()


def run_until_stopped(role: Callable[[], Awaitable[None]]) -> int:
    """`trio.run(role)`; 0 once it returns, the signal's exit code when a second signal cut it short."""
    code = 0
    try:
        trio.run(role)
    except* ExitNow as group:
        code = _first_leaf(group).code
    return code


def _first_leaf(group: BaseExceptionGroup[ExitNow]) -> ExitNow:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
