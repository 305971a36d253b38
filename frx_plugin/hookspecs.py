"""Hook specifications of the ``frx`` pluggy project.

There is one registry per kind of part (backbones, probe sets, generators, decoders, estimators),
each filled by one ``frx_register_*`` hook; the factories those hooks register are typed in
:mod:`frx_plugin.interfaces`, the registries live in :mod:`frx_plugin.plugins`. Built-in parts
register themselves through these hooks exactly as third-party plugins do; see
:mod:`frx_plugin.builtin`.

When the ``frx_register_*`` hooks run: a registry is built by calling its hook on every plugin the
first time frx needs it, and cached until a plugin is registered or unregistered or the plugin
manager is reset; the next lookup after that calls the hook again. Each plugin's hook is called on
its own, with its own ``register``, so that an error names the plugin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from frx_plugin.interfaces import (
        BackboneFactory,
        CommandFactory,
        DecoderFactory,
        EstimatorFactory,
        GeneratorFactory,
        ProbeSetFactory,
        Register,
    )
    from frx_plugin.report import Report

PROJECT_NAME = "frx"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def frx_register_backbones(register: Register[BackboneFactory]) -> None:
    """Register backbones: the kinds of the command line's ``--backbone KIND[:ARGUMENT][,KEY=VALUE...]``.

    Called when frx builds the backbone registry: at its first backbone lookup, and at the first
    after a plugin was registered or unregistered (cached in between). Call ``register(kind,
    factory, description="")`` for each, where ``factory`` follows
    :class:`~frx_plugin.interfaces.BackboneFactory`: ``factory(ARGUMENT, **options)`` (a spec's
    argument goes to the factory's first parameter, or to the one its ``spec_argument`` attribute
    names) returns a model that the ``frx_embed`` hook embeds, or ``(model, facts)`` with
    ``facts["probe"]`` the synthetic probe set's options the model was trained for. Built in:
    ``frx:PATH``, ``synthetic:NAME``, ``torch:package.module:factory@weights.safetensors`` and the
    untrained architectures ``resnet-small`` and ``mobilefacenet-like`` (options only). Errors name
    the file or the argument. Returns nothing.
    """


@hookspec
def frx_register_probe_sets(register: Register[ProbeSetFactory]) -> None:
    """Register probe sets (labelled face data frx can analyse): the kinds of ``--probe KIND[:ARGUMENT][,KEY=VALUE...]``.

    Called when frx builds the probe-set registry: at its first probe-set lookup, and at the first
    after a plugin was registered or unregistered (cached in between). Call ``register(name,
    factory, description="")`` where ``factory`` follows
    :class:`~frx_plugin.interfaces.ProbeSetFactory`: ``factory(**options)`` (a spec's argument goes
    to its first parameter, or to the one its ``spec_argument`` attribute names; ``spec_argument =
    None``: it takes none) returns a :class:`frx_plugin.probe.ProbeSet`. A ``suffixes`` attribute
    lets a bare path with one of those suffixes open it. Returns nothing.
    """


@hookspec
def frx_register_generators(register: Register[GeneratorFactory]) -> None:
    """Register generators with attribute controls: exact counterfactuals, the same face with one attribute changed.

    Called when frx builds the generator registry: at its first generator lookup (identity
    significance, pair explanations, ``frx explain``), and at the first after a plugin was
    registered or unregistered (cached in between). Call ``register(name, factory,
    description="")`` where ``factory`` follows :class:`~frx_plugin.interfaces.GeneratorFactory`:
    ``factory(probe)`` returns an object for that :class:`~frx_plugin.probe.ProbeSet`, or ``None``
    when it cannot render that probe set's samples. The object has ``attributes`` (the names it
    controls) and ``counterfactual(indices, attribute, values)`` → images ``(B, 3, H, W)`` of the
    samples ``indices`` with ``attribute`` set to ``values`` (one per sample: a class index for
    binary and categorical attributes, a value in the attribute's units for continuous ones) and
    everything else unchanged (see :class:`frx_plugin.interfaces.AttributeGenerator`). Returns nothing.
    """


@hookspec
def frx_register_decoders(register: Register[DecoderFactory]) -> None:
    """Register decoders ``G: z → x̂``: stage 1 of the two-stage recovery (decode faces, then read their attributes).

    Called when frx builds the decoder registry: at its first decoder lookup (a callback's
    ``two_stage=TwoStageConfig(decoder=...)``, ``frx demo --two-stage``), and at the first after a plugin was
    registered or unregistered (cached in between). Call ``register(name, factory,
    description="")`` where ``factory`` follows :class:`~frx_plugin.interfaces.DecoderFactory`:
    ``factory(embedding_dim, output_shape, **options)`` returns a fresh, untrained decoder for
    embeddings of size ``embedding_dim`` whose images are ``output_shape`` = ``(C, H, W)``, or
    raises ``ValueError`` for a shape it cannot make. The object follows
    :class:`frx_plugin.interfaces.FaceDecoder`: ``output_shape``, ``fit(task)`` (train, or continue
    training from its own state, on the rows of one identity-disjoint fold's training part),
    ``decode(z, samples, seed)`` → ``(B, samples, C, H, W)`` in [0, 1], and
    ``state_dict``/``load_state_dict`` for the warm start. Returns nothing.
    """


@hookspec
def frx_register_estimators(register: Register[EstimatorFactory]) -> None:
    """Register attribute estimators ``E: x → a``: stage 2 of the two-stage recovery, and ``--estimator KIND[:ARGUMENT]``.

    Called when frx builds the estimator registry: at its first estimator lookup, and at the first
    after a plugin was registered or unregistered (cached in between). Call ``register(name,
    factory, description="")`` where ``factory`` follows
    :class:`~frx_plugin.interfaces.EstimatorFactory`: ``factory(probe, **options)`` (a spec's
    argument goes to its second parameter, or to the one its ``spec_argument`` attribute names)
    returns an estimator for that :class:`~frx_plugin.probe.ProbeSet`, or ``None`` when it cannot
    read its attributes. A factory whose argument parameter has no default (a model file) is called
    only with that argument (``--estimator insightface:FILE.onnx``); the others are also tried in
    turn for a probe set (the two-stage path's default). The object follows
    :class:`frx_plugin.interfaces.AttributeEstimator`: ``attributes`` (the probe attributes it
    outputs), ``input_shape`` ``(C, H, W)``, ``accuracy`` (its own held-out accuracy per attribute,
    possibly empty) and ``estimate(images)`` → ``{attribute: (B,) predictions}`` (class indices for
    discrete kinds, values in the attribute's units for continuous ones); with a ``schema`` (the
    :class:`~frx_plugin.attributes.AttributeSchema` of what it reads) it can label a probe set that
    lacks those attributes. Returns nothing.
    """


@hookspec(firstresult=True)
def frx_embed(model: Any, images: torch.Tensor) -> torch.Tensor | None:
    """Embed a batch of images with ``model``.

    Called by every analysis pass for each batch of the probe set (RGB in
    [0, 1]), unless the caller said how to embed (``embed=``), with the model
    already in eval mode and gradients off for inference. Return the
    embeddings ``(B, D)``, or ``None`` to let the next implementation try.
    The first non-``None`` answer wins; without one frx calls the model
    itself on the transformed images (:class:`frx_plugin.model.ModelAdapter`).
    """


@hookspec
def frx_analysis_completed(report: Report, context: dict[str, Any]) -> None:
    """Receive each finished analysis pass.

    Called on the global-zero process only, once per pass: in a training loop
    after the pass's history has been written (the loop object fires it), in a
    command after its pass. ``context`` holds the caller's facts (``"epoch"``,
    ``"global_step"``, ``"out_dir"``, ``"framework"``). Sinks (loggers, files,
    figures) implement this; the return value is ignored.
    """


@hookspec
def frx_register_commands(register: Register[CommandFactory]) -> None:
    """Register subcommands of the ``frx`` command line (``frx NAME ...``), as ``frx demo`` is.

    Called whenever frx builds its command line. Call ``register(name, factory, description="")``
    where ``factory(parser)`` adds the subcommand's arguments to its ``argparse.ArgumentParser`` and
    returns ``run(args)``, which runs the subcommand on the parsed ``argparse.Namespace`` and returns
    the process exit code (:class:`frx_plugin.interfaces.CommandFactory`); ``description`` is its
    one-line help. A ``ValueError``, ``FileNotFoundError``, ``KeyError`` or ``RuntimeError`` that
    ``run`` raises is printed as ``frx NAME: error: ...`` with exit code 2. A name of frx's own
    commands, or one registered twice, is a ``PluginError``. Returns nothing.
    """


if TYPE_CHECKING:  # pragma: no cover
    _ = (nn,)
