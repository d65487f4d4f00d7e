"""Where keys and secrets come from: command-line values, files (one per line) and
environment variables (comma-separated), so that they can stay out of process lists."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from paddler_trio.environment_variables import EnvironmentVariable


class SecretSourceError(Exception):
    """A key file that cannot be read or holds no key; the message names it (never a key)."""


def collect_keys(
    given: Iterable[str],
    files: Iterable[Path],
    environment_variable: EnvironmentVariable,
    environment: Mapping[str, str] | None = None,
) -> tuple[str, ...]:
    """Every key from the three sources, in that order, blanks dropped, duplicates once."""
    keys = [key.strip() for key in given]
    for path in files:
        keys.extend(_read_lines(path))
    keys.extend((environment_variable.read(environment) or "").split(","))
    return tuple(dict.fromkeys(key for key in (k.strip() for k in keys) if key))


def collect_secret(
    given: str | None,
    file: Path | None,
    environment_variable: EnvironmentVariable,
    environment: Mapping[str, str] | None = None,
) -> str | None:
    """One secret: the flag, else the file's first line, else the environment variable; None if none."""
    if given is not None and given.strip():
        return given.strip()
    if file is not None:
        return _read_lines(file)[0]
    return (environment_variable.read(environment) or "").strip() or None


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SecretSourceError(f"cannot read the key file {path}: {error}") from None
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise SecretSourceError(f"the key file {path} holds no key (one key per line)")
    return lines
