"""The Protocols the parts of frx follow: what a plugin's generator, estimator and decoder offer,
and the factories that the ``frx_register_*`` hooks' ``register`` callbacks take.

A leaf module: it imports nothing of frx but its data types, so any module may type against it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

import torch

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from frx_plugin.probe import ProbeSet

#: How a changed embedding is made: ``embed(rows, attribute, values)`` → (m, D) L2-normalised. An
#: embedder may also offer ``embed.many(edits)``: the embeddings of several edits in one go (a list,
#: one tensor per edit), so faces of different attributes share render and forward batches.
Embedder = Callable[[torch.Tensor, str, torch.Tensor], torch.Tensor]
#: One counterfactual edit: (probe rows, the attribute changed, its new value per row).
Edit = tuple[torch.Tensor, str, torch.Tensor]


@runtime_checkable
class AttributeGenerator(Protocol):
    """Re-renders probe samples with one attribute changed (what ``frx_register_generators`` offers).

    ``attributes``: the attribute names it controls. ``counterfactual(indices, attribute,
    values)``: images ``(B, 3, H, W)`` of the probe samples ``indices`` with ``attribute`` set to
    ``values`` (per sample; class indices or values in the attribute's units), all else equal.

    A generator may also offer ``counterfactuals(edits)``: the images of several edits (a list of
    ``(indices, attribute, values)``) concatenated in their order, rendered in one go; frx uses it
    where present to batch the faces of different attributes together.
    """

    attributes: Sequence[str]

    def counterfactual(self, indices: torch.Tensor, attribute: str, values: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class AttributeEstimator(Protocol):
    """Reads attributes off images (what ``frx_register_estimators`` offers).

    ``attributes``: the probe-set attribute names it outputs. ``input_shape``: the ``(C, H, W)``
    of the images it takes (float in [0, 1]). ``accuracy``: its own held-out accuracy per
    attribute, ``{name: {metric: value}}`` (``accuracy`` and ``balanced_accuracy`` for discrete
    kinds, ``r2`` and ``mae`` for continuous ones; empty when unknown). ``estimate(images)``:
    ``{name: (B,) tensor}``, int64 class indices for discrete kinds, float32 values in the
    attribute's units for continuous ones.
    """

    attributes: Sequence[str]
    input_shape: tuple[int, int, int]
    accuracy: Mapping[str, Mapping[str, float]]

    def estimate(self, images: torch.Tensor) -> dict[str, torch.Tensor]: ...


@dataclass
class DecoderTask:
    """What one fit of a decoder sees: the training part of one identity-disjoint fold.

    ``embeddings`` (n, D) the L2-normalised z of the training faces, ``images`` (n, C, H, W) in
    [0, 1] at the decoder's ``output_shape``, ``identity_embedder`` a differentiable
    ``f(x̂) → z`` (L2-normalised, (B, D)) for the identity loss, or ``None`` for the pixel loss
    alone; ``steps`` optimisation steps, ``seed`` for the batches and noise.
    """

    embeddings: torch.Tensor
    images: torch.Tensor
    identity_embedder: Callable[[torch.Tensor], torch.Tensor] | None = None
    steps: int = 200
    seed: int = 0


@dataclass
class DecoderFit:
    """How a fit went: the mean losses of its first and last 10% of steps, and every step's total loss."""

    steps: int
    pixel_loss_start: float | None  # None: a fit of no steps
    pixel_loss_end: float | None
    identity_loss_start: float | None
    identity_loss_end: float | None
    losses: list[float] = field(default_factory=list, repr=False)

    def to_record(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "pixel_loss_start": self.pixel_loss_start,
            "pixel_loss_end": self.pixel_loss_end,
            "identity_loss_start": self.identity_loss_start,
            "identity_loss_end": self.identity_loss_end,
        }


@runtime_checkable
class FaceDecoder(Protocol):
    """What ``frx_register_decoders`` offers: ``G(z, noise) → x̂``, trainable and warm-startable.

    ``output_shape``: ``(C, H, W)`` of its images. ``fit(task)``: train on a
    :class:`DecoderTask`, continuing from the current weights; return a :class:`DecoderFit`,
    raise :class:`DecoderDiverged` on a NaN loss. ``decode(z, samples, seed)``:
    ``(B, samples, C, H, W)`` in [0, 1], deterministic in ``seed``. ``state_dict()`` /
    ``load_state_dict(state)``: tensors only, for the warm start of the next pass.
    """

    output_shape: tuple[int, int, int]

    def fit(self, task: DecoderTask) -> DecoderFit: ...

    def decode(self, z: torch.Tensor, samples: int = 1, seed: int = 0) -> torch.Tensor: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> Any: ...


# ------------------------------------------------------------------------------------- factories
# What each ``frx_register_*`` hook's ``register(name, factory, description="")`` takes as ``factory``.
# A spec ``KIND:ARGUMENT[,KEY=VALUE...]`` (the command line's ``--backbone``, ``--probe``, ``--estimator``)
# calls the factory registered as KIND with the options as keywords and ARGUMENT in the parameter that
# the factory's ``spec_argument`` attribute names, else its first positional parameter (after
# ``probe`` for estimators); a factory without one takes no argument, and one whose parameter has no
# default needs one.


@runtime_checkable
class BackboneFactory(Protocol):
    """``frx_register_backbones``: ``factory(ARGUMENT?, **options)`` → a model, or ``(model, facts)``.

    The model is what the ``frx_embed`` hook embeds (a ``torch.nn.Module`` mapping images
    ``(B, 3, H, W)`` to embeddings ``(B, D)``, for the built-in fallback). ``facts`` may name the
    synthetic probe set the model was trained for (``{"probe": {...}}``). A spec kind that opens files
    (``frx:PATH``) takes the path as its first parameter; an architecture (``resnet-small``) takes
    options only and returns an untrained model.
    """

    def __call__(self, *args: Any, **options: Any) -> nn.Module | tuple[Any, Mapping[str, Any]]: ...


@runtime_checkable
class ProbeSetFactory(Protocol):
    """``frx_register_probe_sets``: ``factory(ARGUMENT?, **options)`` → a :class:`~frx_plugin.probe.ProbeSet`.

    A ``suffixes`` attribute (``(".bin",)``) lets a bare path with that suffix open it.
    """

    def __call__(self, *args: Any, **options: Any) -> ProbeSet: ...


@runtime_checkable
class GeneratorFactory(Protocol):
    """``frx_register_generators``: ``factory(probe)`` → an :class:`AttributeGenerator` for it, or ``None``."""

    def __call__(self, probe: ProbeSet) -> AttributeGenerator | None: ...


@runtime_checkable
class DecoderFactory(Protocol):
    """``frx_register_decoders``: ``factory(embedding_dim, output_shape, **options)`` → a fresh :class:`FaceDecoder`.

    ``output_shape`` is ``(C, H, W)``; a shape it cannot make is a ``ValueError``.
    """

    def __call__(self, embedding_dim: int, output_shape: tuple[int, int, int], **options: Any) -> FaceDecoder: ...


@runtime_checkable
class EstimatorFactory(Protocol):
    """``frx_register_estimators``: ``factory(probe, ARGUMENT?, **options)`` → an :class:`AttributeEstimator`, or ``None``.

    ``None``: it cannot read that probe set's images. A factory that needs an argument (a model
    file) is used only where a spec names it (``--estimator insightface:FILE.onnx``); the others are
    also tried, in turn, for a probe set (the two-stage path's default estimator). An estimator with
    a ``schema`` (the :class:`~frx_plugin.attributes.AttributeSchema` of what it reads) can label a
    probe set that lacks those attributes.
    """

    def __call__(self, probe: ProbeSet, *args: Any, **options: Any) -> AttributeEstimator | None: ...


F = TypeVar("F", contravariant=True)


class Register(Protocol[F]):
    """The ``register`` callback a ``frx_register_*`` hook receives: ``register(name, factory, description="")``.

    A name registered twice, an empty name or a factory that is not callable is a
    :class:`~frx_plugin.errors.PluginError` naming the plugin and the name.
    """

    def __call__(self, name: str, factory: F, description: str = "") -> None: ...


@runtime_checkable
class CommandFactory(Protocol):
    """Sets up a plugin's ``frx`` subcommand (what ``frx_register_commands`` offers).

    ``factory(parser)``: add the subcommand's arguments to ``parser`` (its own
    ``argparse.ArgumentParser``) and return ``run(args)``, which runs the subcommand on the parsed
    ``argparse.Namespace`` and returns the process exit code.
    """

    def __call__(self, parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]: ...
