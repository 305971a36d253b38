"""Specs: how the command line names a backbone, a probe set and an attribute estimator.

A spec is ``KIND[:ARGUMENT][,KEY=VALUE...]``; the kind picks a registration, the argument (a path,
usually) and the options go to it. Values are read as integers, floats and ``true``/``false``
where they parse as such, otherwise kept as text. Examples::

    insightface:models/w600k_r50.onnx,flip=true     a backbone (the InsightFace adapter)
    frx:frx-demo/backbone.safetensors               the backbone frx demo trained
    torch:mypkg.nets:resnet50@weights.safetensors   a torch module from its factory and safetensors weights
    synthetic,n_identities=200                      the built-in probe set with 200 identities
    insightface-bin:lfw.bin                         a probe set (the InsightFace adapter's reader)
    insightface:genderage.onnx                      an estimator (sex, age)

Where the kinds come from:

- backbones: hook ``frx_register_backbone_specs``: ``register(kind, open, description)`` with
  ``open(argument, **options)`` → a model for the ``frx_embed`` hook, or ``(model, facts)`` where
  ``facts`` may name the probe set the model was trained for (``{"probe": {...}}``);
- probe sets: the probe-set registry (``frx_register_probe_sets``); the argument is the factory's
  first parameter (or the one its ``spec_argument`` attribute names; ``None``: it takes none). A bare path to a file is read by the probe set whose factory lists the file's
  suffix in its ``suffixes`` attribute (``lfw.bin`` → ``insightface-bin``);
- estimators: hook ``frx_register_estimator_specs``: ``register(kind, open, description)`` with
  ``open(argument, probe, **options)`` → an :class:`~frx_plugin.estimators.AttributeEstimator`;
  a spec without a colon names a registered estimator (``frx_register_estimators``).

An unknown kind is a :class:`~frx_plugin.plugins.PluginError` that lists the installed ones.
"""

from __future__ import annotations

import importlib
import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from frx_plugin.plugins import PluginError, backbone_specs, estimator_specs, probe_sets

__all__ = ["Spec", "parse_spec", "open_backbone", "open_probe", "open_estimator", "probe_for", "load_torch_backbone"]

_OPTION = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass(frozen=True)
class Spec:
    """A parsed spec: ``kind``, ``argument`` (``None`` when absent) and ``options``."""

    text: str
    kind: str
    argument: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


def _value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "yes"):
        return True
    if lowered in ("false", "no"):
        return False
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def parse_spec(text: str, what: str = "spec") -> Spec:
    """``KIND[:ARGUMENT][,KEY=VALUE...]`` → :class:`Spec`; an empty kind is a ``ValueError`` naming ``what``."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{what}: an empty spec; expected KIND[:ARGUMENT][,KEY=VALUE...]")
    text = text.strip()
    head, colon, rest = text.partition(":")
    parts = rest.split(",") if colon else head.split(",")
    kind = head if colon else parts.pop(0)
    if not kind:
        raise ValueError(f"{what} {text!r}: no kind before ':'; expected KIND[:ARGUMENT][,KEY=VALUE...]")
    options: dict[str, Any] = {}
    argument_parts: list[str] = []
    for part in parts:
        if _OPTION.match(part):
            key, _, value = part.partition("=")
            if key in options:
                raise ValueError(f"{what} {text!r}: option {key!r} is given twice")
            options[key] = _value(value)
        elif options:
            raise ValueError(f"{what} {text!r}: {part!r} after the options; options are KEY=VALUE and come last")
        else:
            argument_parts.append(part)
    argument = ",".join(argument_parts) if colon else None
    if colon and not argument:
        argument = None
    return Spec(text, kind, argument, options)


def _unknown(what: str, spec: Spec, registry: dict) -> PluginError:
    offered = "; ".join(f"{name} ({reg.description})" for name, reg in sorted(registry.items())) or "none"
    return PluginError(f"{what} {spec.text!r}: unknown kind {spec.kind!r}; the installed plugins offer: {offered}")


def open_backbone(text: str) -> tuple[Any, dict[str, Any]]:
    """The model named by a backbone spec, and the facts its opener gave (possibly empty)."""
    spec = parse_spec(text, "backbone")
    registry = backbone_specs()
    if spec.kind not in registry:
        raise _unknown("backbone", spec, registry)
    if spec.argument is None:
        raise ValueError(f"backbone {spec.text!r}: {spec.kind} backbones need an argument: {registry[spec.kind].description}")
    opened = registry[spec.kind].factory(spec.argument, **spec.options)
    model, facts = opened if isinstance(opened, tuple) else (opened, {})
    return model, dict(facts)


def _first_parameter(factory: Any) -> str | None:
    try:
        parameters = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):
        return None
    for parameter in parameters:
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD) and parameter.name != "self":
            return parameter.name
    return None


def open_probe(text: str) -> Any:
    """The probe set named by a probe spec (or a bare path to a file some probe set reads by its suffix)."""
    registry = probe_sets()
    spec = parse_spec(text, "probe set")
    if spec.kind not in registry:
        path = Path(text)
        readers = [reg for reg in registry.values() if path.suffix and path.suffix in getattr(reg.factory, "suffixes", ())]
        if readers and path.exists():
            return readers[0].factory(str(path))
        if readers:
            raise FileNotFoundError(f"probe set {text!r}: no such file")
        raise _unknown("probe set", spec, registry)
    factory = registry[spec.kind].factory
    options = dict(spec.options)
    if spec.argument is not None:
        first = getattr(factory, "spec_argument", _first_parameter(factory))
        if first is None:
            raise ValueError(f"probe set {spec.text!r}: {spec.kind} takes no argument")
        options[first] = spec.argument
    try:
        return factory(**options)
    except TypeError as exc:  # a wrong option name: say which ones there are
        raise ValueError(f"probe set {spec.text!r}: {exc}; {spec.kind} takes {inspect.signature(factory)}") from None


def open_estimator(text: str, probe: Any) -> Any:
    """The attribute estimator named by an estimator spec, for ``probe``'s images."""
    from frx_plugin.estimators import require_estimator

    spec = parse_spec(text, "estimator")
    registry = estimator_specs()
    if spec.argument is None and not spec.options and spec.kind not in registry:
        return require_estimator(probe, spec.kind)[1]  # a registered estimator by name
    if spec.kind not in registry:
        raise _unknown("estimator", spec, registry)
    if spec.argument is None:
        raise ValueError(f"estimator {spec.text!r}: {spec.kind} estimators need an argument: {registry[spec.kind].description}")
    return registry[spec.kind].factory(spec.argument, probe, **spec.options)


def probe_for(facts: dict[str, Any] | None = None, probe: Any = None, pairs: str | None = None,
              estimators: Sequence[str] = (), progress: Callable[[int, int, str], None] | None = None) -> Any:
    """The probe set a model is analysed on, labelled by the estimator specs.

    ``pairs`` (a verification file, judged on its listed pairs), else ``probe`` (a probe spec, or a
    probe set object), else
    the synthetic probe set the model's ``facts`` name (``frx:`` and ``synthetic:`` backbones), else
    the default synthetic probe set. A probe set left without attributes is a ``ValueError`` that
    says to pass an estimator.
    """
    from frx_plugin.estimators import label_probe_set

    if pairs is not None and probe is not None:
        raise ValueError("pass --pairs or --probe, not both")
    if pairs is not None or probe is not None:
        probe_set = open_probe(pairs or probe) if isinstance(pairs or probe, str) else probe
        if pairs is not None and getattr(probe_set, "pairs", None) is None:
            raise ValueError(f"--pairs {pairs}: {probe_set.source} lists no pairs; pass it as --probe")
    elif (facts or {}).get("probe"):
        from frx_plugin.synthetic import SyntheticProbeSet

        probe_set = SyntheticProbeSet(**facts["probe"])
    else:
        probe_set = open_probe("synthetic")
    if estimators:
        probe_set = label_probe_set(probe_set, [open_estimator(text, probe_set) for text in estimators], progress=progress)
    if len(probe_set.schema) == 0:
        raise ValueError(f"{probe_set.source} labels no attributes; pass --estimator SPEC to read them off its images")
    return probe_set


# ----------------------------------------------------------------------------------- built-in kinds


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
