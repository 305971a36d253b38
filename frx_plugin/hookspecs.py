"""Hook specifications of the ``frx`` pluggy project (DESIGN.md §4).

Built-in parts register themselves through these hooks exactly as third-party
plugins do; see :mod:`frx_plugin.builtin`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from frx_plugin.report import Report

PROJECT_NAME = "frx"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def frx_register_backbones(register: Callable[..., None]) -> None:
    """Register face-recognition backbone factories.

    Called once when the plugin manager first builds its backbone registry.
    Call ``register(name, factory, description="")`` for each backbone, where
    ``factory(**kwargs)`` returns a ``torch.nn.Module`` mapping images
    ``(B, 3, H, W)`` to embeddings ``(B, D)``. Returns nothing.
    """


@hookspec
def frx_register_backbone_specs(register: Callable[..., None]) -> None:
    """Register kinds of backbone spec, as the command line's ``--backbone KIND:ARGUMENT[,KEY=VALUE...]``.

    Called whenever frx opens a backbone spec (:mod:`frx_plugin.specs`). Call ``register(kind, open,
    description="")`` where ``open(argument, **options)`` returns a model that the ``frx_embed``
    hook embeds, or ``(model, facts)`` with ``facts["probe"]`` the synthetic probe set's options the
    model was trained for. Errors name the file or the argument. Returns nothing.
    """


@hookspec
def frx_register_estimator_specs(register: Callable[..., None]) -> None:
    """Register kinds of estimator spec, as the command line's ``--estimator KIND:ARGUMENT[,KEY=VALUE...]``.

    Call ``register(kind, open, description="")`` where ``open(argument, probe, **options)`` returns
    an :class:`~frx_plugin.estimators.AttributeEstimator` for that probe set's images, with a
    ``schema`` (the :class:`~frx_plugin.attributes.AttributeSchema` of what it reads) so that it can
    label a probe set that lacks those attributes. Returns nothing.
    """


@hookspec
def frx_register_probe_sets(register: Callable[..., None]) -> None:
    """Register probe-set factories (labelled face data frx can analyse).

    Called once when the probe-set registry is first built. Call
    ``register(name, factory, description="")`` where ``factory(**kwargs)``
    returns a :class:`frx_plugin.probe.ProbeSet`. Returns nothing.
    """


@hookspec
def frx_register_generators(register: Callable[..., None]) -> None:
    """Register generators with attribute controls (exact counterfactuals, DESIGN.md §2).

    Called whenever frx looks for a generator for a probe set (identity significance, pair
    explanations, ``frx explain``). Call ``register(name, factory, description="")`` where
    ``factory(probe)`` returns an object for that :class:`~frx_plugin.probe.ProbeSet`, or
    ``None`` when it cannot render that probe set's samples. The object has
    ``attributes`` (the names it controls) and ``counterfactual(indices, attribute, values)``
    → images ``(B, 3, H, W)`` of the samples ``indices`` with ``attribute`` set to ``values``
    (one per sample: a class index for binary and categorical attributes, a value in the
    attribute's units for continuous ones) and everything else unchanged (see
    :class:`frx_plugin.counterfactual.AttributeGenerator`). Returns nothing.
    """


@hookspec
def frx_register_decoders(register: Callable[..., None]) -> None:
    """Register decoders ``G: z → x̂``, stage 1 of the two-stage recovery (DESIGN.md §2).

    Called whenever frx builds a decoder by name (the Lightning callback's ``decoder=``, ``frx demo
    --two-stage``). Call ``register(name, factory, description="")`` where ``factory(embedding_dim,
    output_shape, **options)`` returns a fresh, untrained decoder for embeddings of size
    ``embedding_dim`` whose images are ``output_shape`` = ``(C, H, W)``, or raises ``ValueError`` for a
    shape it cannot make. The object follows :class:`frx_plugin.decoders.FaceDecoder`: ``output_shape``,
    ``fit(task)`` (train, or continue training from its own state, on the rows of one identity-disjoint
    fold's training part), ``decode(z, samples, seed)`` → ``(B, samples, C, H, W)`` in [0, 1], and
    ``state_dict``/``load_state_dict`` for the warm start. Returns nothing.
    """


@hookspec
def frx_register_estimators(register: Callable[..., None]) -> None:
    """Register attribute estimators ``E: x → a``, stage 2 of the two-stage recovery (DESIGN.md §2).

    Called whenever frx looks for an estimator for a probe set. Call ``register(name, factory,
    description="")`` where ``factory(probe)`` returns an estimator for that
    :class:`~frx_plugin.probe.ProbeSet`, or ``None`` when it cannot read its attributes. The object
    follows :class:`frx_plugin.estimators.AttributeEstimator`: ``attributes`` (the probe attributes it
    outputs), ``input_shape`` ``(C, H, W)``, ``accuracy`` (its own held-out accuracy per attribute,
    possibly empty) and ``estimate(images)`` → ``{attribute: (B,) predictions}`` (class indices for
    discrete kinds, values in the attribute's units for continuous ones). Returns nothing.
    """


@hookspec(firstresult=True)
def frx_embed(model: Any, images: "torch.Tensor") -> "torch.Tensor | None":
    """Embed a batch of images with ``model``.

    Called by every analysis pass for each batch of the probe set, with the
    model already in eval mode and gradients off. Return the L2-normalised
    embeddings ``(B, D)``, or ``None`` to let the next implementation try.
    The first non-``None`` answer wins; the built-in fallback calls the model
    and L2-normalises its output.
    """


@hookspec
def frx_analysis_completed(report: "Report", context: dict[str, Any]) -> None:
    """Receive each finished analysis pass.

    Called on the global-zero process only, after the pass's history has been
    written. ``context`` holds the caller's facts (``"epoch"``,
    ``"global_step"``, ``"out_dir"``, ``"framework"``). Sinks (loggers, files,
    figures) implement this; the return value is ignored.
    """


@hookspec
def frx_register_commands(register: Callable[..., None]) -> None:
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
