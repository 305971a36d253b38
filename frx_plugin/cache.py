"""frx's on-disk cache folder, shared by everything frx trains once and keeps (estimators, backbones).

``$FRX_CACHE_DIR`` names it; unset or empty, it is ``~/.cache/frx``. Each user of the cache keeps its
files in a subfolder of its own (``estimators/``, ``backbones/``) under names that carry a digest of
what made them, so a changed setting never reuses a stale file.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_DIR_ENV", "cache_dir"]

#: Environment variable naming frx's cache folder (default ``~/.cache/frx``).
CACHE_DIR_ENV = "FRX_CACHE_DIR"


def cache_dir() -> Path:
    """frx's cache folder: ``$FRX_CACHE_DIR`` if set, else ``~/.cache/frx``."""
    configured = os.environ.get(CACHE_DIR_ENV, "")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "frx"
