"""Small real Lightning pieces shared by the callback tests and the DDP script."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch.utils.data import DataLoader, TensorDataset

from frx_plugin.attributes import Attribute, AttributeSchema
from frx_plugin.hookspecs import hookimpl
from frx_plugin.probe import TensorProbeSet

SCHEMA = AttributeSchema(
    [
        Attribute("bright", "binary", group="nuisance"),
        Attribute("pattern", "categorical", classes=("none", "left", "right"), group="identity"),
        Attribute("tone", "continuous", group="identity"),
    ]
)


def make_faces(n_identities: int, per_identity: int, seed: int, size: int = 16):
    """Images whose attributes are visible: brightness of channel 0, a quadrant pattern, the tone of channel 1."""
    g = torch.Generator().manual_seed(seed)
    n = n_identities * per_identity
    identity = torch.arange(n) // per_identity
    pattern = torch.randint(0, 3, (n_identities,), generator=g)[identity]
    tone = torch.randn(n_identities, generator=g)[identity] + 0.1 * torch.randn(n, generator=g)
    bright = torch.randint(0, 2, (n,), generator=g)
    images = 0.25 * torch.rand(n, 3, size, size, generator=g) + 0.3
    images[:, 0] += 0.3 * bright[:, None, None]
    images[:, 1] += 0.1 * tone[:, None, None]
    half = size // 2
    images[pattern == 1, 2, :, :half] += 0.3
    images[pattern == 2, 2, :, half:] += 0.3
    labels = {"bright": bright, "pattern": pattern, "tone": tone.float()}
    return images.clamp(0, 1), identity, labels


def make_probe(n_identities=24, per_identity=5, seed=1):
    images, identity, labels = make_faces(n_identities, per_identity, seed)
    return TensorProbeSet(images, SCHEMA, identity, labels, source="test probe")


def make_train_loader(n_identities=12, per_identity=8, seed=2, batch_size=16):
    images, identity, _ = make_faces(n_identities, per_identity, seed)
    return DataLoader(TensorDataset(images, identity), batch_size=batch_size, shuffle=False)


class TinyFaceModule(LightningModule):
    def __init__(self, num_classes: int = 12, dim: int = 16, nan_after_epoch: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(128, dim)
        )
        self.classifier = torch.nn.Linear(dim, num_classes)
        self.nan_after_epoch = nan_after_epoch

    def forward(self, images):
        z = self.net(images)
        if self.nan_after_epoch is not None and self.current_epoch >= self.nan_after_epoch and not self.training:
            z = z * float("nan")
        return z

    def training_step(self, batch, batch_idx):
        images, labels = batch
        loss = F.cross_entropy(self.classifier(self.net(images)), labels)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


class PixelEstimator:
    """An attribute estimator for :func:`make_faces` images, written from how they are drawn (no training).

    ``bright``: channel 0's mean above the midpoint of its two levels; ``pattern``: which half of
    channel 2 is lifted (none when neither stands out); ``tone``: channel 1's mean back in the
    tone's units. ``only`` restricts its outputs (an estimator that lacks an attribute).
    """

    def __init__(self, size: int = 16, only: tuple[str, ...] | None = None) -> None:
        self.attributes = tuple(only or SCHEMA.names)
        self.input_shape = (3, size, size)
        self.accuracy: dict = {}

    def estimate(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        half = images.shape[-1] // 2
        left, right = images[:, 2, :, :half].mean((1, 2)), images[:, 2, :, half:].mean((1, 2))
        pattern = torch.where(left - right > 0.15, 1, torch.where(right - left > 0.15, 2, 0))
        out = {
            "bright": (images[:, 0].mean((1, 2)) > 0.575).long(),
            "pattern": pattern.long(),
            "tone": ((images[:, 1].mean((1, 2)) - 0.425) / 0.1).float(),
        }
        return {name: out[name] for name in self.attributes}


class PixelEstimatorPlugin:
    """Registers :class:`PixelEstimator` for the test probe sets through the real hook."""

    def __init__(self, **options) -> None:
        self.options = options

    @hookimpl
    def frx_register_estimators(self, register) -> None:
        register("pixels", lambda probe: PixelEstimator(**self.options) if probe.source == "test probe" else None, "test faces")
