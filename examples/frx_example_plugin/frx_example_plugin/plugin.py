"""The plugin module the ``frx`` entry point names: it registers one probe set and one estimator.

``stripes``: faces made in code, each identity a colour, each image striped or plain (the binary
attribute ``striped``) and lighter or darker (the continuous attribute ``brightness``, in [0, 1]).
The ``stripes`` estimator reads both attributes off the images, exactly, for that probe set only.
"""

from __future__ import annotations

import torch

from frx_plugin import hookimpl
from frx_plugin.attributes import Attribute, AttributeSchema
from frx_plugin.probe import TensorProbeSet

SOURCE = "example stripes"
SCHEMA = AttributeSchema([Attribute("striped", "binary", group="nuisance"), Attribute("brightness", "continuous", group="nuisance")])


def stripes_probe_set(n_identities: int = 8, images_per_identity: int = 4, size: int = 32, seed: int = 0) -> TensorProbeSet:
    """A :class:`~frx_plugin.probe.TensorProbeSet` of ``n_identities * images_per_identity`` images ``(3, size, size)``."""
    g = torch.Generator().manual_seed(seed)
    n = n_identities * images_per_identity
    identity = torch.arange(n) // images_per_identity
    colour = torch.rand(n_identities, 3, generator=g)[identity]
    striped = torch.randint(0, 2, (n,), generator=g)
    brightness = torch.rand(n, generator=g)
    rows = (torch.arange(size) // 2 % 2).float()  # 0, 0, 1, 1, ... down the image
    pattern = 1 - 0.5 * striped[:, None, None, None] * rows[None, None, :, None]  # stripes halve every other pair of rows
    images = (0.25 + 0.5 * colour[:, :, None, None]) * pattern.expand(n, 3, size, size)
    images = images.clone()
    images[:, :, 0, :] = brightness[:, None, None]  # the first row carries the brightness, unstriped
    return TensorProbeSet(images, SCHEMA, identity, {"striped": striped, "brightness": brightness}, source=SOURCE)


stripes_probe_set.spec_argument = None  # --probe stripes[,KEY=VALUE...] takes no argument


class StripesEstimator:
    """Reads ``striped`` and ``brightness`` off the images of :func:`stripes_probe_set` (an AttributeEstimator)."""

    schema = SCHEMA
    attributes = ("striped", "brightness")
    accuracy: dict = {"striped": {"accuracy": 1.0, "balanced_accuracy": 1.0}, "brightness": {"r2": 1.0, "mae": 0.0}}

    def __init__(self, size: int) -> None:
        self.input_shape = (3, size, size)
        self.path = "example stripes estimator"

    def estimate(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        striped = (images[:, :, 2] < 0.75 * images[:, :, 4]).any(dim=(1, 2))  # row 2 is halved, row 4 is not
        return {"striped": striped.long(), "brightness": images[:, 0, 0, :].mean(dim=1).float()}


def stripes_estimator(probe) -> StripesEstimator | None:
    """The estimator for a ``stripes`` probe set, ``None`` for any other."""
    if getattr(probe, "source", None) != SOURCE:
        return None
    return StripesEstimator(int(probe.images(torch.arange(1)).shape[-1]))


@hookimpl
def frx_register_probe_sets(register) -> None:
    register("stripes", stripes_probe_set, "example plugin: striped or plain faces made in code: n_identities=, images_per_identity=, size=, seed=")


@hookimpl
def frx_register_estimators(register) -> None:
    register("stripes", stripes_estimator, "example plugin: reads striped and brightness off a stripes probe set")
