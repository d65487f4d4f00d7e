"""The environment variables that stand in for flags: one name per setting.

A setting that was renamed still reads its old names, after the new one, and logs one
deprecation warning per process for each old name that is set. A blank value counts as unset.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import attrs

logger = logging.getLogger(__name__)

# Old names already warned about in this process: a setting may be read many times.
_warned_old_names: set[str] = set()


@attrs.frozen
class EnvironmentVariable:
    """A setting's variable: its name, then the names it had before, most recent first."""

    name: str
    old_names: tuple[str, ...] = ()

    def lookup(self, environment: Mapping[str, str] | None = None) -> tuple[str, str] | None:
        """(the name that was read, its value), or None when no name is set.

        The new name wins over the old ones; an old name that is set is reported once.
        """
        environment = os.environ if environment is None else environment
        found: tuple[str, str] | None = None
        value = environment.get(self.name, "")
        if value.strip():
            found = (self.name, value)
        for old_name in self.old_names:
            old_value = environment.get(old_name, "")
            if not old_value.strip():
                continue
            if found is None:
                found = (old_name, old_value)
                _warn_once(old_name, f"${old_name} is deprecated: set ${self.name} instead")
            else:
                _warn_once(old_name, f"${old_name} is deprecated and ignored: ${found[0]} is set and wins")
        return found

    def read(self, environment: Mapping[str, str] | None = None) -> str | None:
        """The value of the first name that is set (see `lookup`), or None."""
        found = self.lookup(environment)
        return None if found is None else found[1]


def _warn_once(old_name: str, message: str) -> None:
    if old_name not in _warned_old_names:
        _warned_old_names.add(old_name)
        logger.warning("%s", message)


# API keys: named for their flags (--inference-api-key, --management-api-key), as the agent
# secret is (--agent-secret, $PADDLER_AGENT_SECRET), and PADDLER_MANAGEMENT_API_KEY is the name
# README.md documents; Paddler itself has no API keys. Each may hold several keys,
# comma-separated, as each flag may be given several times. The plural names came first.
INFERENCE_API_KEY = EnvironmentVariable("PADDLER_INFERENCE_API_KEY", old_names=("PADDLER_INFERENCE_API_KEYS",))
MANAGEMENT_API_KEY = EnvironmentVariable("PADDLER_MANAGEMENT_API_KEY", old_names=("PADDLER_MANAGEMENT_API_KEYS",))
REVERSEPROXY_API_KEY = EnvironmentVariable("PADDLER_REVERSEPROXY_API_KEY")
AGENT_SECRET = EnvironmentVariable("PADDLER_AGENT_SECRET")

# The cache root: Paddler's own name (spec 1.3), documented in README.md. URL-downloaded models
# go to $PADDLER_CACHE_DIR/downloaded-models (as in Paddler), the bundled models to
# $PADDLER_CACHE_DIR/bundled-models. $PADDLER_TRIO_MODELS_DIR came first and names the bundled
# models' folder itself; only the bundled models read it.
CACHE_DIR = EnvironmentVariable("PADDLER_CACHE_DIR")
BUNDLED_MODELS_CACHE_DIR = EnvironmentVariable("PADDLER_CACHE_DIR", old_names=("PADDLER_TRIO_MODELS_DIR",))
