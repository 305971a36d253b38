"""The built-in synthetic face world, the ground truth of frx's tests and demos.

A vectorised torch renderer of structured cartoon faces from 19 labelled attributes (identity ones
fixed per person, nuisance ones per image), deterministic in (seed, index), with exact
counterfactuals; an attribute estimator trained on its renders; and face-recognition backbones
trained on it. Both trained parts are cached on disk (:mod:`frx_plugin.cache`).

``parameters``: the sampled parameters, their units and :data:`SYNTHETIC_SCHEMA`. ``renderer``: the
torch renderer. ``world``: :class:`SyntheticFaceWorld`, its dataset, probe set and generator.
``estimator``: the built-in attribute estimator. ``backbones``: the built-in trained backbones
(``--backbone synthetic:NAME``).
"""

from frx_plugin.synthetic.backbones import (
    BUILTIN_BACKBONES,
    PROBE_FIRST_IDENTITY,
    load_or_train_synthetic_backbone,
    open_synthetic_backbone,
    train_synthetic_backbone,
)
from frx_plugin.synthetic.estimator import (
    SYNTHETIC_ESTIMATOR_DEFAULTS,
    AttributeCNN,
    SyntheticEstimator,
    load_or_train_synthetic_estimator,
    synthetic_estimator,
    train_synthetic_estimator,
)
from frx_plugin.synthetic.parameters import SYNTHETIC_SCHEMA
from frx_plugin.synthetic.world import (
    SyntheticFaceDataset,
    SyntheticFaceWorld,
    SyntheticGenerator,
    SyntheticProbeSet,
    synthetic_generator,
    world_fingerprint,
)

__all__ = [
    "AttributeCNN",
    "BUILTIN_BACKBONES",
    "PROBE_FIRST_IDENTITY",
    "SYNTHETIC_ESTIMATOR_DEFAULTS",
    "SYNTHETIC_SCHEMA",
    "SyntheticEstimator",
    "SyntheticFaceDataset",
    "SyntheticFaceWorld",
    "SyntheticGenerator",
    "SyntheticProbeSet",
    "load_or_train_synthetic_backbone",
    "load_or_train_synthetic_estimator",
    "open_synthetic_backbone",
    "synthetic_estimator",
    "synthetic_generator",
    "train_synthetic_backbone",
    "train_synthetic_estimator",
    "world_fingerprint",
]
