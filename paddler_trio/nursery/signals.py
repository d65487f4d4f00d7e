"""SIGINT/SIGTERM handling: the first signal cancels the root scope (graceful drain),
a second one while draining exits at once."""

from __future__ import annotations

import logging
import signal

import trio

_logger = logging.getLogger(__name__)


async def cancel_on_signals(
    scope: trio.CancelScope, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run in the root nursery; cancels `scope` when the process is asked to stop."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for received in signals:
            name = signal.Signals(received).name
            if scope.cancel_called:
                _logger.warning("%s again while shutting down: exiting now", name)
                raise SystemExit(130)
            _logger.info("%s received: shutting down", name)
            scope.cancel()
