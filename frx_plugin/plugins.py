"""The frx plugin manager and its registries: one per kind of part, filled by the hooks and cached.

The kinds and their hooks (:mod:`frx_plugin.hookspecs`; factories typed in :mod:`frx_plugin.interfaces`):

=============  ===========================  ===========================================================
registry       hook                         factory
=============  ===========================  ===========================================================
backbones      ``frx_register_backbones``   ``factory(ARGUMENT?, **options)`` → model or (model, facts)
probe sets     ``frx_register_probe_sets``  ``factory(ARGUMENT?, **options)`` → probe set
generators     ``frx_register_generators``  ``factory(probe)`` → generator or ``None``
decoders       ``frx_register_decoders``    ``factory(embedding_dim, output_shape, **options)`` → decoder
estimators     ``frx_register_estimators``  ``factory(probe, ARGUMENT?, **options)`` → estimator or ``None``
=============  ===========================  ===========================================================

A registry is built the first time it is asked for, by calling its hook on each plugin in turn (the
last registered first), and kept until a plugin is registered or unregistered or
:func:`reset_plugin_manager` is called. Backbones, probe sets and estimators are also the kinds of
the command line's specs (:mod:`frx_plugin.specs`): a :class:`Registration` records which factory
parameter a spec's argument goes to.
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import os
import threading
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pluggy

from frx_plugin import hookspecs
from frx_plugin.errors import CounterfactualError, EstimatorError, PluginError
from frx_plugin.hookspecs import PROJECT_NAME

if TYPE_CHECKING:  # pragma: no cover - interfaces imports torch, which listing commands does not need
    from frx_plugin.interfaces import AttributeEstimator, AttributeGenerator

ENTRY_POINT_GROUP = "frx"
DISABLE_AUTOLOAD_ENV = "FRX_DISABLE_PLUGIN_AUTOLOAD"

_lock = threading.Lock()
_manager: FrxPluginManager | None = None
_entry_points_loaded = False
_failed: dict[str, str] = {}


@dataclass(frozen=True)
class Registration:
    """One registered part: its ``name``, ``factory`` and ``description``, and who registered it.

    ``argument``: the factory parameter that a spec's ``KIND:ARGUMENT`` fills (``None``: the kind
    takes no argument); ``needs_argument``: that parameter has no default.
    """

    name: str
    factory: Callable[..., Any]
    description: str
    plugin: str = ""
    argument: str | None = None
    needs_argument: bool = False


@dataclass(frozen=True)
class Kind:
    """One kind of part: its hook, its noun in messages, its factory Protocol (in :mod:`frx_plugin.interfaces`),
    how many positional parameters come before a spec's argument (``None``: never opened from a spec)
    and the hooks that once fed it (now an error that says which hook to implement)."""

    hook: str
    noun: str
    protocol: str
    leading: int | None
    former: tuple[str, ...] = ()


KINDS = {
    "backbone": Kind("frx_register_backbones", "backbone", "BackboneFactory", 0, ("frx_register_backbone_specs",)),
    "probe set": Kind("frx_register_probe_sets", "probe set", "ProbeSetFactory", 0),
    "generator": Kind("frx_register_generators", "generator", "GeneratorFactory", None),
    "decoder": Kind("frx_register_decoders", "decoder", "DecoderFactory", 2),
    "estimator": Kind("frx_register_estimators", "estimator", "EstimatorFactory", 1, ("frx_register_estimator_specs",)),
}


class FrxPluginManager(pluggy.PluginManager):
    """pluggy's plugin manager, holding frx's registries; registering or unregistering a plugin drops them."""

    def __init__(self) -> None:
        super().__init__(PROJECT_NAME)
        self.registries: dict[str, dict[str, Registration]] = {}
        self.generation = 0

    def forget_registries(self) -> None:
        self.generation += 1
        self.registries.clear()

    def register(self, plugin: object, name: str | None = None) -> str | None:
        try:
            return super().register(plugin, name)
        finally:
            self.forget_registries()

    def unregister(self, plugin: object | None = None, name: str | None = None) -> Any:
        try:
            return super().unregister(plugin, name)
        finally:
            self.forget_registries()


def _new_manager() -> FrxPluginManager:
    from frx_plugin import builtin

    pm = FrxPluginManager()
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


def get_plugin_manager() -> FrxPluginManager:
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
    """Forget the manager and its registries so the next call builds new ones (for tests)."""
    global _manager, _entry_points_loaded
    with _lock:
        _manager = None
        _entry_points_loaded = False
        _failed.clear()


# ------------------------------------------------------------------------------------ registries


def spec_argument(factory: Callable[..., Any], leading: int) -> tuple[str | None, bool]:
    """The parameter of ``factory`` a spec's argument goes to, and whether it has no default.

    Its ``spec_argument`` attribute names it (``None``: none), else it is the positional parameter
    after the ``leading`` ones (after ``probe`` for estimators).
    """
    try:
        parameters = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):
        return getattr(factory, "spec_argument", None), False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"]
    name = getattr(factory, "spec_argument", positional[leading].name if len(positional) > leading else None)
    parameter = next((p for p in parameters if p.name == name), None)
    return name, parameter is not None and parameter.default is parameter.empty


def _register(found: dict[str, Registration], kind: Kind, plugin: str,
              name: str, factory: Callable[..., Any], description: str = "") -> None:
    """The ``register`` callback one plugin's hook receives."""
    if not isinstance(name, str) or not name:
        raise PluginError(f"plugin {plugin!r}: {kind.noun} names must be non-empty strings, got {name!r}")
    if not callable(factory):
        raise PluginError(f"plugin {plugin!r}: {kind.noun} {name!r}: the factory must be callable "
                          f"(a {kind.protocol}, see frx_plugin.interfaces), got {type(factory).__name__} {factory!r:.60}")
    if not isinstance(description, str):
        raise PluginError(f"plugin {plugin!r}: {kind.noun} {name!r}: the description must be a string, got {type(description).__name__}")
    if name in found:
        raise PluginError(f"{kind.noun} {name!r} is registered twice (by plugin {found[name].plugin!r} and by plugin {plugin!r})")
    argument, needs = spec_argument(factory, kind.leading) if kind.leading is not None else (None, False)
    found[name] = Registration(name, factory, description, plugin, argument, needs)


def _build(pm: pluggy.PluginManager, kind: Kind) -> dict[str, Registration]:
    for former in kind.former:
        impls = getattr(pm.hook, former).get_hookimpls() if hasattr(pm.hook, former) else []
        if impls:
            raise PluginError(f"plugin {impls[0].plugin_name!r} implements {former}, which frx no longer calls: "
                              f"implement {kind.hook} instead (one {kind.noun} registry; its factories are "
                              f"{kind.protocol} in frx_plugin.interfaces)")
    found: dict[str, Registration] = {}
    for impl in reversed(getattr(pm.hook, kind.hook).get_hookimpls()):  # pluggy's order: the last registered first
        if impl.hookwrapper or impl.wrapper:
            raise PluginError(f"plugin {impl.plugin_name!r}: {kind.hook} cannot be a hook wrapper")
        register = functools.partial(_register, found, kind, impl.plugin_name)
        impl.function(**{name: register for name in impl.argnames})
    return found


def get_registry(kind: str) -> dict[str, Registration]:
    """The registry of ``kind`` (a key of :data:`KINDS`), by name: built from its hook on the first call
    after the plugins changed, cached otherwise; the caller gets its own copy."""
    pm = get_plugin_manager()
    cached = pm.registries.get(kind)
    if cached is None:
        generation = pm.generation
        cached = _build(pm, KINDS[kind])
        if pm.generation == generation:  # no plugin came or went meanwhile
            pm.registries[kind] = cached
    return dict(cached)


def backbones() -> dict[str, Registration]:
    """Every registered backbone, by kind: spec openers (``frx``, ``synthetic``, ``torch``, …) and architectures."""
    return get_registry("backbone")


def probe_sets() -> dict[str, Registration]:
    """Every registered probe-set factory, by name."""
    return get_registry("probe set")


def generators() -> dict[str, Registration]:
    """Every registered generator factory (``factory(probe)`` → generator or ``None``), by name."""
    return get_registry("generator")


def decoders() -> dict[str, Registration]:
    """Every registered decoder factory (``factory(embedding_dim, output_shape, **options)``), by name."""
    return get_registry("decoder")


def estimators() -> dict[str, Registration]:
    """Every registered estimator factory (``factory(probe, ARGUMENT?, **options)`` → estimator or ``None``), by name."""
    return get_registry("estimator")


def _create(registry: dict[str, Registration], kind: str, name: str, kwargs: dict[str, Any]) -> Any:
    if name not in registry:
        raise PluginError(f"unknown {kind} {name!r}; the installed plugins offer: {sorted(registry)}")
    return registry[name].factory(**kwargs)


def create_backbone(name: str, **kwargs: Any) -> Any:
    """The model of backbone ``name`` built with ``kwargs`` (the facts a spec opener gives are dropped)."""
    opened = _create(backbones(), "backbone", name, kwargs)
    return opened[0] if isinstance(opened, tuple) else opened


def create_probe_set(name: str, **kwargs: Any) -> Any:
    return _create(probe_sets(), "probe set", name, kwargs)


# ------------------------------------------------------------------------------------ generators


def find_generator(probe: Any) -> tuple[str, AttributeGenerator] | None:
    """The first registered generator that can render ``probe`` (name, generator), or ``None``."""
    from frx_plugin.interfaces import AttributeGenerator

    for name, registration in generators().items():
        generator = registration.factory(probe)
        if generator is not None:
            if not isinstance(generator, AttributeGenerator):
                raise CounterfactualError(
                    f"generator {name!r} returned {type(generator).__name__}, which lacks 'attributes' or 'counterfactual'"
                )
            return name, generator
    return None


def require_generator(probe: Any) -> tuple[str, AttributeGenerator]:
    """As :func:`find_generator`; none is a :class:`CounterfactualError` naming the installed generators."""
    found = find_generator(probe)
    if found is None:
        raise CounterfactualError(
            f"no generator can render {getattr(probe, 'source', type(probe).__name__)}: exact counterfactuals need a plugin "
            f"implementing the frx_register_generators hook for it (installed: {sorted(generators())}); "
            "or use the latent path (counterfactuals='latent' in the Lightning callback, --path latent in frx explain)"
        )
    return found


# ------------------------------------------------------------------------------------ estimators

#: The built-in estimator trained on a probe set's own labelled faces (tried only by name, or by the two-stage path last).
TRAINED_ESTIMATOR = "trained"


def find_estimator(probe: Any, name: str | None = None,
                   options: Mapping[str, Any] | None = None) -> tuple[str, AttributeEstimator] | None:
    """The first registered estimator that can read ``probe`` (or the one called ``name``), or ``None``.

    Without a name, estimators that need an argument (a model file) are not tried, nor ``trained`` (the
    estimator trained on the probe set's own faces: the two-stage path uses it for the attributes no
    other estimator reads, see :func:`frx_plugin.two_stage.runner.choose_estimator`). ``options`` (with
    a name only) go to the factory as keywords, the spec argument among them.
    """
    from frx_plugin.interfaces import AttributeEstimator

    registry = estimators()
    options = dict(options or {})
    if name is not None and name not in registry:
        raise PluginError(f"unknown estimator {name!r}; the installed plugins offer: {sorted(registry)}")
    if name is None and options:
        raise PluginError(f"estimator options {sorted(options)} need an estimator name")
    for key, registration in registry.items():
        if (name is not None and key != name) or (name is None and (registration.needs_argument or key == TRAINED_ESTIMATOR)):
            continue
        if registration.needs_argument and registration.argument not in options:
            raise PluginError(f"estimator {key!r} needs an argument ({registration.argument}): {registration.description}")
        estimator = registration.factory(probe, **options)
        if estimator is None:
            continue
        if not isinstance(estimator, AttributeEstimator):
            raise EstimatorError(
                f"estimator {key!r} returned {type(estimator).__name__}, which lacks 'attributes', 'input_shape', "
                "'accuracy' or 'estimate'"
            )
        return key, estimator
    return None


def require_estimator(probe: Any, name: str | None = None,
                      options: Mapping[str, Any] | None = None) -> tuple[str, AttributeEstimator]:
    """As :func:`find_estimator`; none is an :class:`EstimatorError` naming the installed estimators."""
    found = find_estimator(probe, name, options)
    if found is None:
        which = f"estimator {name!r} cannot" if name else "no estimator can"
        raise EstimatorError(
            f"{which} read the attributes of {getattr(probe, 'source', type(probe).__name__)}: the two-stage path "
            f"needs a plugin implementing the frx_register_estimators hook for it (installed: {sorted(estimators())})"
        )
    return found


# ------------------------------------------------------------------------------------ decoders


def require_decoder(name: str) -> Registration:
    """The registered decoder ``name``; an unknown name is a :class:`PluginError` listing the installed ones."""
    registry = decoders()
    if name not in registry:
        raise PluginError(f"unknown decoder {name!r}; the installed plugins offer: {sorted(registry)}")
    return registry[name]


def create_decoder(name: str, embedding_dim: int, output_shape: tuple[int, ...], **options: Any) -> Any:
    """A fresh decoder ``name`` for embeddings of ``embedding_dim`` and images of ``output_shape`` ``(C, H, W)``."""
    return require_decoder(name).factory(embedding_dim, tuple(output_shape), **options)
