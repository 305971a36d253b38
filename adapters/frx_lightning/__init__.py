"""frx for Lightning: a callback that logs attribute leakage of the embeddings while a model trains.

The names are loaded on first use, so that the ``frx`` entry point (:mod:`frx_lightning.plugin`) does
not import Lightning until a command needs it.
"""

from __future__ import annotations

from frx_plugin.lazy import lazy_names

_LAZY = {"AttributeRecoveryCallback": "callback", "LightningCollectives": "collectives"}

__all__ = ["AttributeRecoveryCallback", "LightningCollectives"]


__getattr__, __dir__ = lazy_names(__name__, _LAZY)
