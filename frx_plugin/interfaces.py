"""The Protocols the parts of frx follow: what a plugin's generator, estimator and decoder offer.

A leaf module: it imports nothing of frx but its data types, so any module may type against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import torch

#: How a changed embedding is made: ``embed(rows, attribute, values)`` → (m, D) L2-normalised.
Embedder = Callable[[torch.Tensor, str, torch.Tensor], torch.Tensor]


@runtime_checkable
class AttributeGenerator(Protocol):
    """Re-renders probe samples with one attribute changed (what ``frx_register_generators`` offers).

    ``attributes``: the attribute names it controls. ``counterfactual(indices, attribute,
    values)``: images ``(B, 3, H, W)`` of the probe samples ``indices`` with ``attribute`` set to
    ``values`` (per sample; class indices or values in the attribute's units), all else equal.
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
    pixel_loss_start: float
    pixel_loss_end: float
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


import argparse  # noqa: E402 - for CommandFactory only, kept beside it


@runtime_checkable
class CommandFactory(Protocol):
    """Sets up a plugin's ``frx`` subcommand (what ``frx_register_commands`` offers).

    ``factory(parser)``: add the subcommand's arguments to ``parser`` (its own
    ``argparse.ArgumentParser``) and return ``run(args)``, which runs the subcommand on the parsed
    ``argparse.Namespace`` and returns the process exit code.
    """

    def __call__(self, parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]: ...
