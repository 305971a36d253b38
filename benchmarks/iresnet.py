"""An IResNet-50-sized face-recognition backbone for the benchmarks (plain torch).

Built after the shape of arcface_torch's ``iresnet50``: a 3×3 stem at full resolution, four
stages of [3, 4, 14, 3] improved residual blocks of widths 64/128/256/512, each stage opening at
stride 2, blocks of BN-conv-BN-PReLU-conv-BN with a projected shortcut where the shape changes,
then a BN-dropout-linear-BN neck to a 512-d embedding. At 112×112 the last feature map is 7×7,
so the model has ~43.6 M parameters and ~6.3 GMACs per face, the size of the usual ArcFace
backbone. This is the benchmarks' own code (no weights, no pretrained model): it exists to put a
backbone of realistic cost under frx's pass.

Its input is what arcface_torch trains on, RGB as ``(x - 0.5) / 0.5``; ``frx_transform =
"arcface"`` tells frx so.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)


class ImprovedBlock(nn.Module):
    """BN - conv3×3 - BN - PReLU - conv3×3 (stride) - BN, added to the (projected) input."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            nn.BatchNorm2d(in_channels, eps=1e-5),
            _conv3x3(in_channels, out_channels),
            nn.BatchNorm2d(out_channels, eps=1e-5),
            nn.PReLU(out_channels),
            _conv3x3(out_channels, out_channels, stride),
            nn.BatchNorm2d(out_channels, eps=1e-5),
        )
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels, eps=1e-5)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(x) + self.shortcut(x)


class IResNet(nn.Module):
    """Images ``(B, 3, S, S)`` normalised as ``(x - 0.5) / 0.5`` → embeddings ``(B, embedding_dim)``.

    ``input_size`` must be divisible by 16 (four stride-2 stages); the neck's linear layer is sized
    for it (512 × 7 × 7 inputs at 112, as arcface_torch's).
    """

    #: the input it is trained on (frx's ModelAdapter reads this)
    frx_transform = "arcface"

    def __init__(
        self,
        blocks: tuple[int, ...] = (3, 4, 14, 3),
        widths: tuple[int, ...] = (64, 128, 256, 512),
        embedding_dim: int = 512,
        input_size: int = 112,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(blocks) != len(widths):
            raise ValueError(f"IResNet: {len(blocks)} stage depths for {len(widths)} widths")
        scale = 2 ** len(widths)
        if input_size % scale or input_size < scale:
            raise ValueError(f"IResNet: input_size must be a positive multiple of {scale}, got {input_size}")
        self.input_size = input_size
        self.embedding_dim = embedding_dim
        self.stem = nn.Sequential(_conv3x3(3, widths[0]), nn.BatchNorm2d(widths[0], eps=1e-5), nn.PReLU(widths[0]))
        stages: list[nn.Module] = []
        in_channels = widths[0]
        for depth, width in zip(blocks, widths):
            stage = [ImprovedBlock(in_channels, width, stride=2)]
            stage += [ImprovedBlock(width, width, stride=1) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*stage))
            in_channels = width
        self.stages = nn.Sequential(*stages)
        side = input_size // scale
        self.neck = nn.Sequential(
            nn.BatchNorm2d(in_channels, eps=1e-5),
            nn.Dropout(dropout),
            nn.Flatten(),
            nn.Linear(in_channels * side * side, embedding_dim),
            nn.BatchNorm1d(embedding_dim, eps=1e-5),
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"IResNet: built for {self.input_size}×{self.input_size} inputs, got {tuple(images.shape[-2:])}")
        return self.neck(self.stages(self.stem(images)))


def iresnet50(embedding_dim: int = 512, input_size: int = 112, dropout: float = 0.0) -> IResNet:
    """The IResNet-50 shape: stages of [3, 4, 14, 3] blocks, widths 64/128/256/512."""
    return IResNet((3, 4, 14, 3), (64, 128, 256, 512), embedding_dim=embedding_dim, input_size=input_size, dropout=dropout)
