"""Specs: how the command line names a backbone, a probe set and an attribute estimator.

A spec is ``KIND[:ARGUMENT][,KEY=VALUE...]``; the kind picks a registration, the argument (a path,
usually) and the options go to it. Values are read as integers, floats and ``true``/``false``
where they parse as such, otherwise kept as text. Examples::

    insightface:models/w600k_r50.onnx,flip=true     a backbone (the InsightFace adapter)
    frx:frx-demo/backbone.safetensors               the backbone frx demo trained
    torch:mypkg.nets:resnet50@weights.safetensors   a torch module from its factory and safetensors weights
    resnet-small,embedding_dim=64                   an untrained built-in architecture
    synthetic,n_identities=200                      the built-in probe set with 200 identities
    insightface-bin:lfw.bin                         a probe set (the InsightFace adapter's reader)
    insightface:genderage.onnx                      an estimator (sex, age)
    synthetic                                       an estimator registered for the probe set, by name

The kinds are the names in the registries of :mod:`frx_plugin.plugins`, one per kind of part:
backbones (``frx_register_backbones``), probe sets (``frx_register_probe_sets``) and estimators
(``frx_register_estimators``). The options go to the registered factory as keywords, and the
argument to the factory parameter its registration names (:attr:`~frx_plugin.plugins.Registration.argument`:
the factory's ``spec_argument`` attribute, else its first positional parameter, after ``probe`` for
estimators); a kind without such a parameter takes no argument, one whose parameter has no default
needs one. A backbone factory returns a model for the ``frx_embed`` hook, or ``(model, facts)``
where ``facts`` may name the probe set the model was trained for (``{"probe": {...}}``). A bare path
to a file is read by the probe set whose factory lists the file's suffix in its ``suffixes``
attribute (``lfw.bin`` → ``insightface-bin``).

An unknown kind is a :class:`~frx_plugin.errors.PluginError` that lists the installed ones.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from frx_plugin import DISTRIBUTION
from frx_plugin.options import check_options
from frx_plugin.plugins import PluginError, Registration, backbones, decoders, estimators, probe_sets, require_estimator

__all__ = ["Spec", "parse_spec", "open_backbone", "open_probe", "open_estimator", "open_decoder", "decoder_options", "probe_for", "probe_with_kinds",
           "OPTIONAL_MODULES", "missing_module_message"]

_OPTION = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")

#: Modules that frx's optional extras install, by top-level name: the extra (``pip install 'frx-plugin[EXTRA]'``).
OPTIONAL_MODULES = {"insightface": "insightface", "onnx": "insightface", "onnxruntime": "insightface", "lightning": "lightning"}


def missing_module_message(exc: ModuleNotFoundError) -> str | None:
    """One line for a module a part needs and the environment lacks (with the extra that installs it); None for
    a module of frx itself (a broken install or a bug, which keeps its traceback)."""
    name = (exc.name or "").split(".")[0]
    if not name or name.startswith("frx"):
        return None
    extra = OPTIONAL_MODULES.get(name)
    how = f"pip install '{DISTRIBUTION}[{extra}]'" if extra else "install the Python package that provides it"
    return f"needs the Python module {name!r}, which is not installed: {how}"


@contextmanager
def _opening(what: str, text: str) -> Iterator[None]:
    """A module missing while a part opens is a one-line PluginError naming the spec and what to install."""
    try:
        yield
    except ModuleNotFoundError as exc:
        message = missing_module_message(exc)
        if message is None:
            raise
        raise PluginError(f"{what} {text!r}: {message}") from None


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
    if colon and "," in head:  # the first ':' is in an option's value (kinds=age:continuous), not after the kind
        head, colon, rest = text, "", ""
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


def _registration(what: str, spec: Spec, registry: dict[str, Registration]) -> Registration:
    if spec.kind not in registry:
        raise _unknown(what, spec, registry)
    return registry[spec.kind]


def _options(what: str, spec: Spec, registration: Registration, *leading: Any) -> dict[str, Any]:
    """The spec's options with its argument under the parameter the registration names, checked against the factory."""
    options = dict(spec.options)
    if spec.argument is not None:
        if registration.argument is None:
            raise ValueError(f"{what} {spec.text!r}: {spec.kind} takes no argument")
        options[registration.argument] = spec.argument
    elif registration.needs_argument:
        raise ValueError(f"{what} {spec.text!r}: {spec.kind} {what}s need an argument: {registration.description}")
    try:
        signature = inspect.signature(registration.factory)
    except (TypeError, ValueError):  # a callable without a signature: let the call tell
        return options
    check_options(f"{what} {spec.text!r}", f"{spec.kind} {what}s", signature, spec.options, len(leading), registration.argument)
    try:
        signature.bind(*leading, **options)
    except TypeError as exc:  # a missing parameter, say: show the signature
        raise ValueError(f"{what} {spec.text!r}: {exc}; {spec.kind} takes {signature}") from None
    return options


#: Options every backbone spec takes, for the model contract (:class:`frx_plugin.model.ModelAdapter`), unless its
#: factory takes an option of that name itself: ``transform=arcface|unit|imagenet``, ``embed=backbone|1|KEY``.
CONTRACT_OPTIONS = ("transform", "embed")


def open_backbone(text: str) -> tuple[Any, dict[str, Any]]:
    """The model named by a backbone spec, and the facts its opener gave (possibly empty).

    ``transform=`` and ``embed=`` say how frx calls the model (its input range, which output is the
    embedding); given, the model comes back as a :class:`~frx_plugin.model.ModelAdapter`.
    """
    from dataclasses import replace

    from frx_plugin.model import ModelAdapter

    spec = parse_spec(text, "backbone")
    registration = _registration("backbone", spec, backbones())
    try:
        own = set(inspect.signature(registration.factory).parameters)
    except (TypeError, ValueError):
        own = set()
    contract = {k: spec.options[k] for k in CONTRACT_OPTIONS if k in spec.options and k not in own}
    spec = replace(spec, options={k: v for k, v in spec.options.items() if k not in contract})
    with _opening("backbone", text):
        opened = registration.factory(**_options("backbone", spec, registration))
    model, facts = opened if isinstance(opened, tuple) else (opened, {})
    if contract:
        try:
            model = ModelAdapter(model, **contract)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"backbone {text!r}: {exc}") from None
    return model, dict(facts)


def open_probe(text: str) -> Any:
    """The probe set named by a probe spec (or a bare path to a file some probe set reads by its suffix)."""
    registry = probe_sets()
    spec = parse_spec(text, "probe set")
    if spec.kind not in registry:
        path = Path(text)
        readers = [reg for reg in registry.values() if path.suffix and path.suffix in getattr(reg.factory, "suffixes", ())]
        if readers and path.exists():
            with _opening("probe set", text):
                return readers[0].factory(str(path))
        if readers:
            raise FileNotFoundError(f"probe set {text!r}: no such file")
        raise _unknown("probe set", spec, registry)
    registration = registry[spec.kind]
    options = _options("probe set", spec, registration)
    try:
        with _opening("probe set", text):
            return registration.factory(**options)
    except TypeError as exc:  # a wrong option name: say which ones there are
        raise ValueError(f"probe set {spec.text!r}: {exc}; {spec.kind} takes {inspect.signature(registration.factory)}") from None


def open_decoder(text: str, embedding_dim: int, output_shape: tuple[int, int, int] | None) -> Any:
    """A fresh decoder named by a decoder spec (``stylegan2:GENERATOR.pt,encoder=ENC.pth,mean_latent=MEAN.pth``) for
    embeddings of ``embedding_dim`` and images of ``output_shape`` ``(C, H, W)``."""
    spec = parse_spec(text, "decoder")
    registration = _registration("decoder", spec, decoders())
    options = _options("decoder", spec, registration, embedding_dim, output_shape)
    with _opening("decoder", text):
        return registration.factory(embedding_dim, output_shape, **options)


def decoder_options(text: str) -> tuple[str, dict[str, Any]]:
    """A decoder spec → its registered name and the options for its factory (the argument under its parameter,
    checked against the factory): what :class:`~frx_plugin.two_stage.TwoStageConfig` takes."""
    spec = parse_spec(text, "decoder")
    registration = _registration("decoder", spec, decoders())
    return spec.kind, _options("decoder", spec, registration, 1, (3, 16, 16))


def probe_with_kinds(probe: str | None, kinds: str | None) -> str | None:
    """The probe spec with ``--kinds`` as its ``kinds=`` option (the kinds of an image folder's CSV columns)."""
    if kinds is None:
        return probe
    if probe is None:
        raise ValueError(f"--kinds {kinds}: goes with --probe SPEC, the probe set whose CSV columns it types (e.g. image-folder:DIR)")
    if "," in kinds:
        raise ValueError(f"--kinds {kinds}: join the columns with ';', not ',' (e.g. age:continuous;glasses:binary)")
    if "kinds" in parse_spec(probe, "probe set").options:
        raise ValueError(f"--kinds {kinds} and the probe spec's kinds= option both give the kinds; give one")
    return f"{probe},kinds={kinds}"


def open_estimator(text: str, probe: Any) -> Any:
    """The attribute estimator named by an estimator spec, for ``probe``'s images.

    ``KIND`` alone names a registered estimator (``synthetic``); ``KIND:ARGUMENT`` opens one from a
    file (``insightface:genderage.onnx``). An estimator that cannot read ``probe`` is an
    :class:`~frx_plugin.errors.EstimatorError`.
    """
    spec = parse_spec(text, "estimator")
    registration = _registration("estimator", spec, estimators())
    with _opening("estimator", text):
        return require_estimator(probe, spec.kind, _options("estimator", spec, registration, probe))[1]


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
    elif facts and facts.get("probe"):
        from frx_plugin.synthetic import SyntheticProbeSet

        probe_set = SyntheticProbeSet(**facts["probe"])
    else:
        probe_set = open_probe("synthetic")
    if estimators:
        probe_set = label_probe_set(probe_set, [open_estimator(text, probe_set) for text in estimators], progress=progress)
    if len(probe_set.schema) == 0:
        raise ValueError(f"{probe_set.source} labels no attributes; pass --estimator SPEC to read them off its images")
    return probe_set
