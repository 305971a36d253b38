"""frx: what do your face embeddings know? Attribute recovery from deep face representations.

Implements the idea of Ren et al., "Understanding Deep Face Representation via
Attribute Recovery" (IEEE TIFS 2024) as a plugin for training frameworks.

``hookimpl`` (the marker of plugin hooks) is loaded on first use, so that the ``frx`` command
starts without importing anything it does not need.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

#: The distribution's name on PyPI (``pip install frx-plugin``); the command is ``frx``, the import package ``frx_plugin``.
DISTRIBUTION = "frx-plugin"

__all__ = ["DISTRIBUTION", "hookimpl", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "hookimpl":
        from frx_plugin.hookspecs import hookimpl

        globals()["hookimpl"] = hookimpl
        return hookimpl
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
