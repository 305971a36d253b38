"""Attribute estimators ``E: x → a``: stage 2 of the paper's two-stage recovery (DESIGN.md §2).

An estimator reads attributes off face images. The two-stage path applies it to faces decoded
from embeddings (:mod:`frx_plugin.decoders`); an estimator that cannot read an attribute from
real faces cannot read it from decoded ones either, so every estimator reports its own held-out
accuracy per attribute and the two-stage report carries it.

Estimators come through the ``frx_register_estimators`` hook: ``factory(probe)`` returns one for a
probe set, or ``None``. Built in: :func:`synthetic_estimator`, a small CNN trained on renders of
the synthetic world and cached on disk by its configuration.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import torch

from frx_plugin.recovery import AnalysisError


class EstimatorError(AnalysisError):
    """An estimator that cannot be used as asked (wrong input shape, broken output, failed training)."""


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


def find_estimator(probe: Any, name: str | None = None) -> tuple[str, AttributeEstimator] | None:
    """The first registered estimator that can read ``probe`` (or the one called ``name``), or ``None``."""
    from frx_plugin.plugins import PluginError, estimators

    registry = estimators()
    if name is not None and name not in registry:
        raise PluginError(f"unknown estimator {name!r}; the installed plugins offer: {sorted(registry)}")
    for key, registration in registry.items():
        if name is not None and key != name:
            continue
        estimator = registration.factory(probe)
        if estimator is None:
            continue
        if not isinstance(estimator, AttributeEstimator):
            raise EstimatorError(
                f"estimator {key!r} returned {type(estimator).__name__}, which lacks 'attributes', 'input_shape', "
                "'accuracy' or 'estimate'"
            )
        return key, estimator
    return None


def require_estimator(probe: Any, name: str | None = None) -> tuple[str, AttributeEstimator]:
    found = find_estimator(probe, name)
    if found is None:
        from frx_plugin.plugins import estimators

        which = f"estimator {name!r}" if name else "no estimator"
        raise EstimatorError(
            f"{which} can read the attributes of {getattr(probe, 'source', type(probe).__name__)}: the two-stage path "
            f"needs a plugin implementing the frx_register_estimators hook for it (installed: {sorted(estimators())})"
        )
    return found
