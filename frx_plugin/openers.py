"""The built-in backbone spec openers ``frx:PATH`` and ``torch:package.module:factory@weights.safetensors``.

Registered by :mod:`frx_plugin.builtin` through ``frx_register_backbones``; each is an
:class:`~frx_plugin.interfaces.BackboneFactory` (the spec's argument first, its options as keywords).
This module imports no registry, so the built-in parts never import the plugin manager.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

from frx_plugin.options import check_options

__all__ = ["open_frx_backbone", "load_torch_backbone"]


def open_frx_backbone(argument: str) -> tuple[Any, dict[str, Any]]:
    """``frx:PATH``: a backbone saved by frx (``frx demo``'s ``backbone.safetensors``, or the folder holding it)."""
    from frx_plugin.models import BACKBONE_FILE, load_backbone

    path = Path(argument).expanduser()
    if path.is_dir():
        path = path / BACKBONE_FILE
    model, description = load_backbone(path)
    return model, {"probe": description.get("probe"), "path": str(path)}


def load_torch_backbone(argument: str, **options: Any) -> Any:
    """``torch:package.module:factory@weights.safetensors``: ``factory(**options)`` with the weights loaded strictly.

    The weights are read with safetensors (no pickle). A missing module, factory or file, and
    weights that do not fit the module (missing, unexpected or mis-shaped tensors) are errors that
    name them.
    """
    import torch
    from safetensors.torch import load_file

    target, at, weights = argument.rpartition("@") if "@" in argument else (argument, "", "")
    module_name, colon, factory_name = target.partition(":")
    if not colon or not module_name or not factory_name or not weights:
        raise ValueError(f"torch backbone {argument!r}: expected package.module:factory@weights.safetensors")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"torch backbone {argument!r}: cannot import {module_name!r}: {exc}") from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise ValueError(f"torch backbone {argument!r}: {module_name} has no callable {factory_name!r}")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"torch backbone {argument!r}: no weights file {path}")
    if path.suffix != ".safetensors":
        raise ValueError(f"torch backbone {argument!r}: weights must be a .safetensors file (frx never unpickles weights), got {path.name}")
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # no signature to read: the call tells
        signature = None
    if signature is not None:
        check_options(f"torch backbone {argument!r}", f"{module_name}:{factory_name} backbones", signature, options)
    model = factory(**options)
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"torch backbone {argument!r}: {factory_name}() returned {type(model).__name__}, not a torch.nn.Module")
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for a damaged header
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        parts = [f"{label} {names[:5]}{' …' if len(names) > 5 else ''}"
                 for label, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", wrong)) if names]
        raise ValueError(f"{path}: the weights do not fit {module_name}:{factory_name}: " + "; ".join(parts))
    model.load_state_dict(state)
    return model.eval()
