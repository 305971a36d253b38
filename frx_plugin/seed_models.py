"""The face models of Ren et al. (TIFS 2024) in frx's own code: MobileFaceNet and IR-SE-50, loading their weights.

Both follow the arcface layout of TreB1eN's InsightFace_Pytorch, which the seed
(github.com/RenMin1991/Facial-Attribute-Recovery, ``face_utils/arcface.py``) uses: 112×112 RGB input
in [-1, 1] (``(x − 0.5) / 0.5``), a 512-d L2-normalised embedding, BatchNorm in eval mode. The
parameter names are theirs, so the state dicts they published (saved from ``DataParallel``, with the
``module.`` prefix) load as they are. Registered as the backbone spec kinds ``seed-mobilefacenet:PATH``
and ``seed-irse50:PATH``; each model says its input transform (``frx_transform = "arcface"``) and
resizes other sizes to 112×112 bilinearly with aligned corners, as the seed's ``ReconModel`` does.
frx never downloads their files; the seed's README links where they are published.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from frx_plugin.checkpoints import (
    load_into,
    read_checkpoint,
    state_dict_in,
    strip_prefix,
)
from frx_plugin.errors import CheckpointError

__all__ = [
    "IRSE_UNITS",
    "SEED_FACE_PUBLISHED",
    "IRSEBackbone",
    "SeedMobileFaceNet",
    "load_seed_irse",
    "load_seed_mobilefacenet",
    "open_seed_irse50",
    "open_seed_mobilefacenet",
]

SEED_FACE_PUBLISHED = ("the seed's README (github.com/RenMin1991/Facial-Attribute-Recovery) links where its face "
                       "models (arcface_mb.pth, arcface_r50.pth) are published")
INPUT_SIZE = 112
#: units per stage of the IR(-SE) backbones by depth
IRSE_UNITS = {50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 152: (3, 8, 36, 3)}
_STAGE_WIDTHS = (64, 128, 256, 512)


def _to_input_size(x: torch.Tensor) -> torch.Tensor:
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=True)
    return x


class _ConvBN(nn.Module):
    """Convolution without bias, BatchNorm, then PReLU when ``prelu`` (the seed's Conv_block / Linear_block)."""

    def __init__(self, in_c: int, out_c: int, kernel: int = 1, stride: int = 1, padding: int = 0, groups: int = 1,
                 prelu: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_c, out_c, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_c)
        if prelu:
            self.prelu = nn.PReLU(out_c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return self.prelu(x) if hasattr(self, "prelu") else x


class _DepthWise(nn.Module):
    """Expand (1×1) → depthwise 3×3 → project (1×1, linear), with a residual connection when ``residual``."""

    def __init__(self, in_c: int, out_c: int, expanded: int, stride: int, residual: bool = False):
        super().__init__()
        self.conv = _ConvBN(in_c, expanded)
        self.conv_dw = _ConvBN(expanded, expanded, 3, stride, 1, groups=expanded)
        self.project = _ConvBN(expanded, out_c, prelu=False)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.conv_dw(self.conv(x)))
        return x + out if self.residual else out


class _Residual(nn.Module):
    def __init__(self, channels: int, blocks: int, expanded: int):
        super().__init__()
        self.model = nn.Sequential(*[_DepthWise(channels, channels, expanded, 1, residual=True) for _ in range(blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class SeedMobileFaceNet(nn.Module):
    """MobileFaceNet as the seed defines it (its ``MobiFaceNet``): 112×112 in [-1, 1] → L2-normalised embedding."""

    frx_transform = "arcface"

    def __init__(self, embedding_size: int = 512):
        super().__init__()
        self.conv1 = _ConvBN(3, 64, 3, 2, 1)
        self.conv2_dw = _ConvBN(64, 64, 3, 1, 1, groups=64)
        self.conv_23 = _DepthWise(64, 64, 128, 2)
        self.conv_3 = _Residual(64, 2, 128)
        self.conv_34 = _DepthWise(64, 128, 256, 2)
        self.conv_4 = _Residual(128, 3, 256)
        self.conv_45 = _DepthWise(128, 256, 512, 2)
        self.conv_5 = _Residual(256, 6, 512)
        self.conv_6_sep = _ConvBN(256, 512)
        self.conv_6_dw = _ConvBN(512, 512, 7, groups=512, prelu=False)
        self.linear = nn.Linear(512, embedding_size, bias=False)
        self.bn = nn.BatchNorm1d(embedding_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2_dw(self.conv1(_to_input_size(x)))
        for stage in (self.conv_23, self.conv_3, self.conv_34, self.conv_4, self.conv_45, self.conv_5):
            x = stage(x)
        x = self.conv_6_dw(self.conv_6_sep(x)).flatten(1)
        return F.normalize(self.bn(self.linear(x)), dim=1)


class _SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True)))))


class _IRUnit(nn.Module):
    """An improved-residual unit: BN → 3×3 → BN → PReLU → 3×3 (stride) → BN (→ squeeze-excite), plus the shortcut
    (a strided 1×1 convolution and BN where the unit downsamples, the input itself otherwise)."""

    def __init__(self, in_c: int, depth: int, stride: int, se: bool):
        super().__init__()
        if stride != 1:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_c, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))
        layers = [nn.BatchNorm2d(in_c), nn.Conv2d(in_c, depth, 3, 1, 1, bias=False), nn.BatchNorm2d(depth),
                  nn.PReLU(depth), nn.Conv2d(depth, depth, 3, stride, 1, bias=False), nn.BatchNorm2d(depth)]
        self.res_layer = nn.Sequential(*layers, *([_SqueezeExcite(depth)] if se else []))
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut_layer(x) if self.stride != 1 else x
        return self.res_layer(x) + shortcut


class IRSEBackbone(nn.Module):
    """The arcface IR-SE backbone (the seed's ``Backbone(50)``; ``units`` per stage, :data:`IRSE_UNITS`), 112×112 in
    [-1, 1] → L2-normalised 512-d embedding; ``se=False`` is the plain IR variant."""

    frx_transform = "arcface"

    def __init__(self, units: Sequence[int] = IRSE_UNITS[50], se: bool = True):
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        body, in_c = [], 64
        for depth, count in zip(_STAGE_WIDTHS, units):
            body += [_IRUnit(in_c, depth, 2, se)] + [_IRUnit(depth, depth, 1, se) for _ in range(count - 1)]
            in_c = depth
        self.body = nn.Sequential(*body)
        self.output_layer = nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(0.1), nn.Flatten(),
                                          nn.Linear(512 * 7 * 7, 512), nn.BatchNorm1d(512))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.output_layer(self.body(self.input_layer(_to_input_size(x)))), dim=1)


def _seed_state(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    return strip_prefix(state_dict_in(read_checkpoint(path, what, SEED_FACE_PUBLISHED), path, what))


def _batch_counter(key: str) -> bool:  # BatchNorm's step counter: absent from files older than PyTorch 0.4.1
    return key.endswith("num_batches_tracked")


def load_seed_mobilefacenet(path: str | Path) -> SeedMobileFaceNet:
    """The seed's MobileFaceNet (``arcface_mb.pth``) in eval mode; a file that does not fit is one line naming it."""
    what = "seed MobileFaceNet weights"
    state = _seed_state(path, what)
    size = state["linear.weight"].shape[0] if "linear.weight" in state else 512
    return load_into(SeedMobileFaceNet(int(size)), state, path, what, optional=_batch_counter)


def load_seed_irse(path: str | Path) -> IRSEBackbone:
    """The seed's IR-SE backbone (``arcface_r50.pth``; the depth, 50, 100 or 152, and SE read off the keys)."""
    what = "seed IR-SE weights"
    state = _seed_state(path, what)
    stage_of_unit = {}
    for key in state:
        if key.startswith("body.") and key.endswith("res_layer.1.weight"):
            stage_of_unit[int(key.split(".")[1])] = _STAGE_WIDTHS.index(state[key].shape[0]) \
                if state[key].shape[0] in _STAGE_WIDTHS else -1
    units = tuple(sum(1 for s in stage_of_unit.values() if s == i) for i in range(len(_STAGE_WIDTHS)))
    if units not in IRSE_UNITS.values():
        raise CheckpointError(f"{what} {path}: not an IR-SE 50/100/152 backbone (units per stage {units}; expected "
                              f"one of {sorted(IRSE_UNITS.values())}; keys such as {sorted(state)[:3]})")
    se = any(".res_layer.6.fc1." in key for key in state)
    return load_into(IRSEBackbone(units, se), state, path, what, optional=_batch_counter)


def open_seed_mobilefacenet(path: str) -> SeedMobileFaceNet:
    """``seed-mobilefacenet:PATH``: the seed's MobileFaceNet weights (arcface_mb.pth)."""
    return load_seed_mobilefacenet(path)


def open_seed_irse50(path: str) -> IRSEBackbone:
    """``seed-irse50:PATH``: the seed's IR-SE-50 weights (arcface_r50.pth)."""
    return load_seed_irse(path)
