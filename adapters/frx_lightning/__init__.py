"""frx for Lightning: a callback that logs attribute leakage of the embeddings while a model trains.

The names are loaded on first use, so that the ``frx`` entry point (:mod:`frx_lightning.plugin`) does
not import Lightning until a command needs it.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"AttributeRecoveryCallback": "callback", "LightningCollectives": "collectives"}

__all__ = ["AttributeRecoveryCallback", "LightningCollectives"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"frx_lightning.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
