"""Where URL-downloaded models are cached (spec 1.3): `$PADDLER_CACHE_DIR`, else
`$XDG_CACHE_HOME/paddler`, else `~/.cache/paddler`; files in `<root>/downloaded-models/`."""

from __future__ import annotations

import os
from pathlib import Path

from paddler_trio.environment_variables import CACHE_DIR


def model_cache_directory() -> Path:
    explicit = CACHE_DIR.read()
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    root = Path(xdg) if xdg else Path.home() / ".cache"
    return root / "paddler"


def downloaded_models_directory() -> Path:
    return model_cache_directory() / "downloaded-models"
