"""Logging of refused requests that cannot flood the log: at most one line per client
address and kind of refusal per window (a client hammering with a wrong key is one line a
minute, not one per request). Keys are never part of what is logged."""

from __future__ import annotations

import logging
import time

# Addresses remembered at most; beyond it, entries whose window has passed are forgotten.
_MAX_REMEMBERED = 4096


class RefusalLog:
    def __init__(self, logger: logging.Logger, *, window: float = 60.0) -> None:
        self._logger = logger
        self._window = window
        self._last_logged: dict[tuple[str, str], float] = {}

    def refused(self, client: str, kind: str, message: str, *args: object) -> None:
        """Log `message % args` (with the client address) unless this client had this kind logged recently."""
        now = time.monotonic()
        key = (client, kind)
        last = self._last_logged.get(key)
        if last is not None and now - last < self._window:
            return
        if len(self._last_logged) >= _MAX_REMEMBERED:
            self._forget_before(now - self._window)
        self._last_logged[key] = now
        self._logger.warning("%s: " + message + " (further ones from it are not logged for %.0f s)", client, *args, self._window)

    def _forget_before(self, moment: float) -> None:
        self._last_logged = {key: at for key, at in self._last_logged.items() if at >= moment}
        if len(self._last_logged) >= _MAX_REMEMBERED:
            self._last_logged.clear()
