"""Small face-recognition networks in plain torch: a residual backbone and an ArcFace head.

The demo trains these on the synthetic world; frx itself analyses any module
that maps images to embeddings.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class _BasicBlock(nn.Module):
    """Pre-activation-free residual block (conv-BN-PReLU-conv-BN + shortcut), as in IResNet's spirit."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.PReLU(out_channels),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class ResidualFaceNet(nn.Module):
    """A narrow residual CNN mapping ``(B, 3, H, W)`` images in [0, 1] to ``(B, embedding_dim)`` embeddings.

    Four stages halve the resolution (a stem halves it once more), then a
    BN-dropout-linear-BN neck like arcface_torch's IResNet gives the
    embedding. Works at any input size divisible by 32; 64×64 is the demo's.
    """

    def __init__(
        self,
        embedding_dim: int = 128,
        widths: tuple[int, ...] = (16, 32, 64, 128),
        blocks_per_stage: int = 1,
        input_size: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if input_size % 32:
            raise ValueError(f"ResidualFaceNet: input_size must be divisible by 32, got {input_size}")
        if embedding_dim < 2:
            raise ValueError(f"ResidualFaceNet: embedding_dim must be at least 2, got {embedding_dim}")
        self.input_size = input_size
        self.embedding_dim = embedding_dim
        self.widths = tuple(widths)
        self.blocks_per_stage = blocks_per_stage
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.PReLU(widths[0])
        )
        layers: list[nn.Module] = []
        in_ch = widths[0]
        for width in widths:
            for b in range(blocks_per_stage):
                layers.append(_BasicBlock(in_ch, width, 2 if b == 0 else 1))
                in_ch = width
        self.stages = nn.Sequential(*layers)
        side = input_size // 2 ** (len(widths) + 1)
        self.neck = nn.Sequential(
            nn.BatchNorm2d(in_ch),
            nn.Dropout(dropout),
            nn.Flatten(),
            nn.Linear(in_ch * side * side, embedding_dim),
            nn.BatchNorm1d(embedding_dim),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-2:] != (self.input_size, self.input_size):
            images = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False, antialias=True)
        x = (images - 0.5) / 0.5
        return self.neck(self.stages(self.stem(x)))


class ArcFaceHead(nn.Module):
    """Additive angular margin softmax (ArcFace): logits ``s·cos(θ_y + m)`` for the target, ``s·cos θ_j`` otherwise."""

    def __init__(self, embedding_dim: int, num_classes: int, scale: float = 32.0, margin: float = 0.3) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"ArcFaceHead: num_classes must be at least 2, got {num_classes}")
        if not 0.0 <= margin < math.pi / 2:
            raise ValueError(f"ArcFaceHead: margin must be in [0, pi/2), got {margin}")
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.normal_(self.weight, std=0.01)
        self.scale = scale
        self.margin = margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cosine = F.linear(F.normalize(embeddings), F.normalize(self.weight)).clamp(-1 + 1e-7, 1 - 1e-7)
        target = cosine.gather(1, labels[:, None])
        theta = torch.acos(target)
        # where θ + m would pass π the margin no longer lowers the logit; use the CosFace-style fallback there
        with_margin = torch.where(theta + self.margin < math.pi, torch.cos(theta + self.margin), target - self.margin * math.sin(self.margin))
        logits = cosine.scatter(1, labels[:, None], with_margin)
        return logits * self.scale


# --------------------------------------------------------------------------- saved backbones

#: safetensors metadata key of a saved backbone's description (JSON).
BACKBONE_METADATA = "frx.backbone"
#: The trained backbone ``frx demo`` leaves in its output folder (``frx explain`` reads it).
BACKBONE_FILE = "backbone.safetensors"


def save_backbone(module: ResidualFaceNet, path, probe: dict | None = None) -> None:
    """Write a :class:`ResidualFaceNet`'s weights as safetensors, with what rebuilds it in the header.

    ``probe``: optionally, the synthetic probe set it was evaluated on (keyword arguments of
    :class:`~frx_plugin.synthetic.SyntheticProbeSet`), so ``frx explain`` can rebuild both.
    """
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    from frx_plugin.history import atomic_write

    description = {
        "architecture": "resnet-small",
        "embedding_dim": module.embedding_dim,
        "input_size": module.input_size,
        "widths": list(module.widths),
        "blocks_per_stage": module.blocks_per_stage,
        "probe": probe,
    }
    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    atomic_write(Path(path), lambda tmp: save_file(state, str(tmp), metadata={BACKBONE_METADATA: json.dumps(description)}))


def load_backbone(path) -> tuple[ResidualFaceNet, dict]:
    """A backbone saved by :func:`save_backbone` (in eval mode) and its description.

    Reads with safetensors (no pickle); a missing or foreign file is a ``FileNotFoundError`` /
    ``ValueError`` that names the path.
    """
    import json

    from frx_plugin.history import read_tagged_safetensors

    header, state = read_tagged_safetensors(path, BACKBONE_METADATA, "frx's save_backbone")
    description = json.loads(header)
    if description.get("architecture") != "resnet-small":
        raise ValueError(f"{path}: unknown architecture {description.get('architecture')!r}")
    module = ResidualFaceNet(
        embedding_dim=description["embedding_dim"],
        widths=tuple(description["widths"]),
        blocks_per_stage=description["blocks_per_stage"],
        input_size=description["input_size"],
    )
    module.load_state_dict(state)
    return module.eval(), description
