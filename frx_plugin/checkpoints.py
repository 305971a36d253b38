"""Reading PyTorch weight files that other projects saved, and fitting them to frx's own modules.

Every file is read with ``torch.load(path, map_location="cpu", weights_only=True)``: tensors and plain
containers only, never arbitrary pickled objects. Every problem is one line, a
:class:`~frx_plugin.errors.CheckpointError` naming the file and the keys at fault.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch

from frx_plugin.errors import CheckpointError

ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)

__all__ = ["check_state_dict", "key_shapes", "load_into", "read_checkpoint", "state_dict_in", "strip_prefix"]

_LISTED = 5


def read_checkpoint(path: str | Path, what: str, where_published: str | None = None) -> Any:
    """The object saved in ``path`` (read without unpickling code); a missing or unreadable file is one line.

    ``what`` names the file's role in the message ("StyleGAN2 generator checkpoint"); ``where_published``
    says where such files are published (frx never downloads one).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        where = f"; {where_published}" if where_published else ""
        raise CheckpointError(f"{what} {path}: no such file{where} (frx never downloads weights)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - an unpickling error, a damaged zip, a truncated file: one line
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{what} {path}: not a readable PyTorch weights file ({detail[:200]})") from None


def state_dict_in(obj: Any, path: str | Path, what: str, key: str | None = None) -> dict[str, torch.Tensor]:
    """The name → tensor mapping in a loaded file (under ``key`` when given, e.g. rosinality's ``"g_ema"``)."""
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            found = sorted(str(k) for k in obj)[:_LISTED] if isinstance(obj, Mapping) else type(obj).__name__
            raise CheckpointError(f"{what} {path}: no {key!r} entry (found {found})")
        obj = obj[key]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{what} {path}: expected a state dict (names → tensors), got {type(obj).__name__}")
    bad = sorted(str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor))
    if bad:
        raise CheckpointError(f"{what} {path}: entries that are not named tensors: {_names(bad)}")
    return dict(obj)


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """``state`` with ``prefix`` (``DataParallel``'s ``module.``) taken off the names that start with it."""
    return {k.removeprefix(prefix): v for k, v in state.items()}


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return f"{shown}, … ({len(names)} in all)" if len(names) > _LISTED else shown


def check_state_dict(expected: Mapping[str, tuple[int, ...]], state: Mapping[str, torch.Tensor], path: str | Path,
                     what: str, optional: Callable[[str], bool] = lambda key: False) -> None:
    """Raise one :class:`CheckpointError` line naming the missing, unexpected and mis-shaped keys of ``state``.

    ``expected`` maps each key to its shape; keys for which ``optional(key)`` holds may be missing.
    """
    missing = sorted(k for k in expected if k not in state and not optional(k))
    unexpected = sorted(k for k in state if k not in expected)
    wrong = sorted(f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k])})"
                   for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k]))
    parts = [f"{label} {_names(names)}" for label, names in (("missing", missing), ("unexpected", unexpected),
                                                             ("mis-shaped", wrong)) if names]
    if parts:
        raise CheckpointError(f"{what} {path}: the weights do not fit: " + "; ".join(parts))


def key_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Every key of ``module``'s state dict with its shape."""
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def load_into(module: ModuleT, state: Mapping[str, torch.Tensor], path: str | Path, what: str,
              optional: Callable[[str], bool] = lambda key: False) -> ModuleT:
    """``module`` with ``state`` loaded after :func:`check_state_dict` (optional keys left as they are), in eval mode."""
    check_state_dict(key_shapes(module), state, path, what, optional)
    own = module.state_dict()
    with torch.no_grad():
        for key, value in state.items():
            own[key].copy_(value.to(own[key].dtype))
    return module.eval()
