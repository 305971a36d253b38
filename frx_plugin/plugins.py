"""The frx plugin manager: hook specs, built-in parts, and lazily loaded entry points."""

from __future__ import annotations

import importlib.metadata
import os
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import pluggy

from frx_plugin import hookspecs
from frx_plugin.errors import PluginError
from frx_plugin.hookspecs import PROJECT_NAME

ENTRY_POINT_GROUP = "frx"
DISABLE_AUTOLOAD_ENV = "FRX_DISABLE_PLUGIN_AUTOLOAD"

_lock = threading.Lock()
_manager: pluggy.PluginManager | None = None
_entry_points_loaded = False
_failed: dict[str, str] = {}


def _new_manager() -> pluggy.PluginManager:
    from frx_plugin import builtin

    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    pm.register(builtin, name="frx.builtin")
    return pm


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    """Import every ``frx`` entry point once; a plugin that fails to import is skipped with a warning."""
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # an optional adapter whose framework is not installed
            _failed[ep.name] = f"{type(exc).__name__}: {exc}"
            warnings.warn(
                f"frx plugin {ep.name!r} ({ep.value}) could not be loaded and is skipped: {exc}",
                RuntimeWarning,
                stacklevel=3,
            )
            continue
        pm.register(plugin, name=ep.name)


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager; entry points are loaded on first use, once.

    Set ``FRX_DISABLE_PLUGIN_AUTOLOAD=1`` to skip entry points (built-ins are
    always there; register others with ``get_plugin_manager().register(obj)``).
    """
    global _manager, _entry_points_loaded
    with _lock:
        if _manager is None:
            _manager = _new_manager()
        if not _entry_points_loaded and os.environ.get(DISABLE_AUTOLOAD_ENV, "") in ("", "0"):
            _entry_points_loaded = True
            _load_entry_points(_manager)
        return _manager


def failed_plugins() -> dict[str, str]:
    """Entry points that failed to import, with the reason (for error messages)."""
    return dict(_failed)


def reset_plugin_manager() -> None:
    """Forget the manager so the next call builds a new one (for tests)."""
    global _manager, _entry_points_loaded
    with _lock:
        _manager = None
        _entry_points_loaded = False
        _failed.clear()


@dataclass(frozen=True)
class Registration:
    name: str
    factory: Callable[..., Any]
    description: str


def _collect(hook_name: str, kind: str) -> dict[str, Registration]:
    pm = get_plugin_manager()
    found: dict[str, Registration] = {}

    def register(name: str, factory: Callable[..., Any], description: str = "") -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"{kind} name must be a non-empty string, got {name!r}")
        if not callable(factory):
            raise PluginError(f"{kind} {name!r}: factory must be callable, got {type(factory).__name__}")
        if name in found:
            raise PluginError(f"{kind} {name!r} is registered twice")
        found[name] = Registration(name, factory, description)

    getattr(pm.hook, hook_name)(register=register)
    return found


def backbones() -> dict[str, Registration]:
    """Every registered backbone factory, by name (built from the hooks on each call)."""
    return _collect("frx_register_backbones", "backbone")


def probe_sets() -> dict[str, Registration]:
    """Every registered probe-set factory, by name."""
    return _collect("frx_register_probe_sets", "probe set")


def backbone_specs() -> dict[str, Registration]:
    """Every registered backbone spec kind (``open(argument, **options)``), by kind (see :mod:`frx_plugin.specs`)."""
    return _collect("frx_register_backbone_specs", "backbone spec kind")


def estimator_specs() -> dict[str, Registration]:
    """Every registered estimator spec kind (``open(argument, probe, **options)``), by kind."""
    return _collect("frx_register_estimator_specs", "estimator spec kind")


def generators() -> dict[str, Registration]:
    """Every registered generator factory (``factory(probe)`` → generator or ``None``), by name."""
    return _collect("frx_register_generators", "generator")


def decoders() -> dict[str, Registration]:
    """Every registered decoder factory (``factory(embedding_dim, output_shape, **options)``), by name."""
    return _collect("frx_register_decoders", "decoder")


def estimators() -> dict[str, Registration]:
    """Every registered estimator factory (``factory(probe)`` → estimator or ``None``), by name."""
    return _collect("frx_register_estimators", "estimator")


def _create(registry: dict[str, Registration], kind: str, name: str, kwargs: dict[str, Any]) -> Any:
    if name not in registry:
        raise PluginError(f"unknown {kind} {name!r}; the installed plugins offer: {sorted(registry)}")
    return registry[name].factory(**kwargs)


def create_backbone(name: str, **kwargs: Any) -> Any:
    return _create(backbones(), "backbone", name, kwargs)


def create_probe_set(name: str, **kwargs: Any) -> Any:
    return _create(probe_sets(), "probe set", name, kwargs)


def require_decoder(name: str) -> Registration:
    """The registered decoder ``name``; an unknown name is a :class:`PluginError` listing the installed ones."""
    registry = decoders()
    if name not in registry:
        raise PluginError(f"unknown decoder {name!r}; the installed plugins offer: {sorted(registry)}")
    return registry[name]


def create_decoder(name: str, embedding_dim: int, output_shape: tuple[int, int, int], **options: Any) -> Any:
    return require_decoder(name).factory(embedding_dim, tuple(output_shape), **options)
