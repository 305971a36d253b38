"""The latent transformer of Ren et al. (TIFS 2024): a face embedding z → offsets of StyleGAN2's W+ latents.

Their decoder is ``G(mean_wplus + T(z))``: T is an MLP with one head per W+ layer, the generator G is a
StyleGAN2 (:mod:`frx_plugin.two_stage.stylegan.generator`) and ``mean_wplus`` a fixed mean W+ latent.
T scales z by 16, passes it through ``n_mlp − 4`` shared equalised linear layers with a bias leaky ReLU
(four in their ``IDDEncoder(14, 8)``), then through ``n_latents`` heads of three such layers and one
plain equalised linear layer each, and squashes the stacked heads with ``tanh``. The parameter names
are theirs (``mapping.{i}``, ``heads.{h}.{j}``), so the state dicts they published load as they are,
with or without ``DataParallel``'s ``module.`` prefix. Their files are linked from the README of
github.com/RenMin1991/Facial-Attribute-Recovery; frx never downloads them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from frx_plugin.checkpoints import (
    load_into,
    read_checkpoint,
    state_dict_in,
    strip_prefix,
)
from frx_plugin.errors import CheckpointError, DecoderError
from frx_plugin.two_stage.stylegan.generator import EqualLinear

__all__ = ["INPUT_SCALE", "SEED_PUBLISHED", "LatentTransformer", "load_latent_transformer", "load_mean_wplus"]

#: where the seed's weight files are published (frx never downloads them)
SEED_PUBLISHED = ("the seed's README (github.com/RenMin1991/Facial-Attribute-Recovery) links where its weight files "
                  "are published")
#: the factor the embedding is multiplied by before the first layer (a unit vector's entries are ~1/√512)
INPUT_SCALE = 16.0
_HEAD_LAYERS = 4


class LatentTransformer(nn.Module):
    """z (N×width) → W+ offsets (N×n_latents×width) in (−1, 1); ``n_mlp − 4`` shared layers (the seed's
    ``IDDEncoder(n_latents, n_mlp)``; ``width`` 512 there)."""

    def __init__(self, n_latents: int = 14, n_mlp: int = 8, width: int = 512):
        super().__init__()
        self.n_latents, self.n_mlp, self.width = n_latents, n_mlp, width
        self.mapping = nn.Sequential(*[EqualLinear(width, width, activate=True) for _ in range(max(n_mlp - 4, 0))])
        self.heads = nn.ModuleList(
            nn.Sequential(*[EqualLinear(width, width, activate=True) for _ in range(_HEAD_LAYERS - 1)],
                          EqualLinear(width, width))
            for _ in range(n_latents))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.width:
            raise DecoderError(f"LatentTransformer: embeddings must be N×{self.width}, got {tuple(z.shape)}")
        shared = self.mapping(z * INPUT_SCALE)
        return torch.tanh(torch.stack([head(shared) for head in self.heads], dim=1))


_WHAT = "latent transformer (IDDEncoder) weights"


def load_latent_transformer(path: str | Path) -> LatentTransformer:
    """The seed's latent transformer from its state dict (``module.`` prefix or not), in eval mode; the number of
    heads, shared layers and the width are read off the keys and shapes."""
    state = strip_prefix(state_dict_in(read_checkpoint(path, _WHAT, SEED_PUBLISHED), path, _WHAT))
    heads = {k.split(".")[1] for k in state if k.startswith("heads.")}
    shared = {k.split(".")[1] for k in state if k.startswith("mapping.")}
    if not heads or "heads.0.0.weight" not in state:
        raise CheckpointError(f"{_WHAT} {path}: not an IDDEncoder state dict (no heads.0.0.weight; found "
                              f"{sorted(state)[:5]})")
    transformer = LatentTransformer(len(heads), len(shared) + 4, int(state["heads.0.0.weight"].shape[1]))
    return load_into(transformer, state, path, _WHAT)


def load_mean_wplus(path: str | Path, n_latent: int | None = None, style_dim: int | None = None) -> torch.Tensor:
    """The seed's mean W+ latent (``torch.save(tensor)``), as 1×n_latent×style_dim.

    A 1×style_dim or style_dim-long w is repeated over ``n_latent`` layers; a shape that fits neither
    the given ``n_latent`` nor ``style_dim`` is one :class:`~frx_plugin.errors.CheckpointError` line.
    """
    what = "mean W+ latent"
    obj = read_checkpoint(path, what, SEED_PUBLISHED)
    if isinstance(obj, dict) and len(obj) == 1:
        obj = next(iter(obj.values()))
    if not isinstance(obj, torch.Tensor) or not obj.is_floating_point():
        raise CheckpointError(f"{what} {path}: expected a float tensor, got {type(obj).__name__}")
    mean = obj.detach().float()
    if mean.ndim == 1 or (mean.ndim == 2 and mean.shape[0] == 1):
        mean = mean.reshape(1, 1, -1).expand(1, n_latent or 1, -1)
    elif mean.ndim == 2:
        mean = mean.unsqueeze(0)
    if (mean.ndim != 3 or mean.shape[0] != 1 or (n_latent is not None and mean.shape[1] != n_latent)
            or (style_dim is not None and mean.shape[2] != style_dim)):
        raise CheckpointError(f"{what} {path}: shape {tuple(obj.shape)} does not fit "
                              f"{n_latent or 'n_latent'}×{style_dim or 'style_dim'}")
    return mean.contiguous()
