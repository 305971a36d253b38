"""The ``frx_lightning`` entry point: the hooks this adapter implements."""

from __future__ import annotations

from typing import Any

from frx_plugin.hookspecs import hookimpl


@hookimpl
def frx_run_demo(options: dict[str, Any]) -> int:
    from frx_lightning.demo import run_demo

    return run_demo(options)
