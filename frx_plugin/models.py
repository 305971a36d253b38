"""Small face-recognition networks in plain torch: two backbones and an ArcFace head.

:class:`ResidualFaceNet` (``resnet-small``) is the demo's backbone; :class:`MobileFaceNetLike`
(``mobilefacenet-like``) is a second, differently built architecture for comparisons. The demo and
:mod:`frx_plugin.synthetic.backbones` train them on the synthetic world; frx itself analyses any module that maps
images to embeddings. :func:`save_backbone` / :func:`load_backbone` write and read either as
safetensors.
"""

from __future__ import annotations

import math
from typing import Any

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

    #: the input it is trained on: the probe images as they are, RGB in [0, 1]
    frx_transform = "unit"

    #: the name :func:`save_backbone` records (and the backbone registry uses)
    architecture = "resnet-small"
    #: the constructor arguments :func:`save_backbone` records (as attributes of the same names)
    recorded_arguments = ("embedding_dim", "input_size", "widths", "blocks_per_stage")

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
        return self.neck(self.stages(self.stem(_resize_and_normalise(images, self.input_size))))

    def constructor_arguments(self) -> dict:
        """What :func:`save_backbone` records to rebuild it (dropout is left out: it changes no weight and no eval output)."""
        return _recorded_arguments(self)


def _recorded_arguments(module: ResidualFaceNet | MobileFaceNetLike) -> dict:
    """``{name: value}`` of the module's ``recorded_arguments`` as JSON values (tuples as lists)."""
    values = {name: getattr(module, name) for name in type(module).recorded_arguments}
    return {name: list(v) if isinstance(v, tuple) else v for name, v in values.items()}


def _resize_and_normalise(images: torch.Tensor, input_size: int) -> torch.Tensor:
    """Images in [0, 1] at any size → ``input_size`` × ``input_size`` in [-1, 1] (what both backbones take)."""
    if images.shape[-2:] != (input_size, input_size):
        images = F.interpolate(images, size=(input_size, input_size), mode="bilinear", align_corners=False, antialias=True)
    return (images - 0.5) / 0.5


def _conv_bn(in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1, groups: int = 1,
             activation: bool = True, padding: int | None = None) -> nn.Sequential:
    """conv (no bias) - BN [- PReLU]; padded to keep the size at stride 1 unless ``padding`` is given."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2 if padding is None else padding, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    if activation:
        layers.append(nn.PReLU(out_channels))
    return nn.Sequential(*layers)


class _Bottleneck(nn.Module):
    """MobileFaceNet's inverted residual: 1×1 expand - 3×3 depthwise (stride) - 1×1 linear projection, with a
    shortcut when the shape is kept."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.body = nn.Sequential(
            _conv_bn(in_channels, hidden),
            _conv_bn(hidden, hidden, 3, stride, groups=hidden),
            _conv_bn(hidden, out_channels, activation=False),
        )
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.residual else out


class MobileFaceNetLike(nn.Module):
    """A small MobileFaceNet-style CNN mapping ``(B, 3, H, W)`` images in [0, 1] to ``(B, embedding_dim)`` embeddings.

    As in MobileFaceNet (Chen et al. 2018), scaled down: a stride-2 3×3 stem and a 3×3 depthwise
    conv, then stages of inverted-residual bottlenecks (PReLU, linear projection; the first block of
    each stage halves the resolution), a 1×1 conv to ``last_width`` channels, a global depthwise
    conv (GDC: one k×k filter per channel over the whole final map) and a linear layer with
    BatchNorm1d giving the embedding. Inputs are normalised and resized like :class:`ResidualFaceNet`'s;
    ``input_size`` must be divisible by ``2 ** (len(widths) + 1)`` (16 with the default three stages).
    """

    #: the input it is trained on: the probe images as they are, RGB in [0, 1]
    frx_transform = "unit"

    architecture = "mobilefacenet-like"
    recorded_arguments = ("embedding_dim", "input_size", "stem_width", "widths", "blocks", "expansion", "last_width")

    def __init__(
        self,
        embedding_dim: int = 128,
        input_size: int = 64,
        stem_width: int = 16,
        widths: tuple[int, ...] = (32, 64, 96),
        blocks: tuple[int, ...] = (1, 2, 2),
        expansion: int = 2,
        last_width: int = 256,
    ) -> None:
        super().__init__()
        widths, blocks = tuple(int(w) for w in widths), tuple(int(b) for b in blocks)
        if embedding_dim < 2:
            raise ValueError(f"MobileFaceNetLike: embedding_dim must be at least 2, got {embedding_dim}")
        if not widths or len(widths) != len(blocks) or min(widths) < 1 or min(blocks) < 1:
            raise ValueError(f"MobileFaceNetLike: widths and blocks must be positive and of equal length, got {widths} and {blocks}")
        if min(stem_width, expansion, last_width) < 1:
            raise ValueError(
                f"MobileFaceNetLike: stem_width, expansion and last_width must be positive, got {stem_width}, {expansion}, {last_width}")
        factor = 2 ** (len(widths) + 1)
        if input_size < factor or input_size % factor:
            raise ValueError(f"MobileFaceNetLike: input_size must be a positive multiple of {factor}, got {input_size}")
        self.embedding_dim = embedding_dim
        self.input_size = input_size
        self.stem_width = stem_width
        self.widths = widths
        self.blocks = blocks
        self.expansion = expansion
        self.last_width = last_width
        self.stem = nn.Sequential(_conv_bn(3, stem_width, 3, 2), _conv_bn(stem_width, stem_width, 3, groups=stem_width))
        layers: list[nn.Module] = []
        in_ch = stem_width
        for width, count in zip(widths, blocks):
            for b in range(count):
                layers.append(_Bottleneck(in_ch, width, 2 if b == 0 else 1, expansion))
                in_ch = width
        self.stages = nn.Sequential(*layers)
        side = input_size // factor
        self.neck = nn.Sequential(
            _conv_bn(in_ch, last_width),
            _conv_bn(last_width, last_width, side, groups=last_width, activation=False, padding=0),  # GDC: side×side → 1×1
            nn.Flatten(),
            nn.Linear(last_width, embedding_dim, bias=False),
            nn.BatchNorm1d(embedding_dim),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.neck(self.stages(self.stem(_resize_and_normalise(images, self.input_size))))

    def constructor_arguments(self) -> dict:
        """What :func:`save_backbone` records to rebuild it."""
        return _recorded_arguments(self)


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


#: Architectures :func:`save_backbone` writes and :func:`load_backbone` rebuilds, by the name the file records.
BACKBONE_ARCHITECTURES: dict[str, type[ResidualFaceNet] | type[MobileFaceNetLike]] = {
    ResidualFaceNet.architecture: ResidualFaceNet,
    MobileFaceNetLike.architecture: MobileFaceNetLike,
}


def save_backbone(module: nn.Module, path, probe: dict | None = None, extra: dict | None = None) -> None:
    """Write a backbone's weights as safetensors, with what rebuilds it in the header (atomically).

    ``module``: one of :data:`BACKBONE_ARCHITECTURES` (another type is a ``TypeError``). The header's
    description holds ``architecture``, the constructor arguments and ``probe``: optionally, the
    synthetic probe set it was evaluated on (keyword arguments of
    :class:`~frx_plugin.synthetic.SyntheticProbeSet`), so ``frx explain`` can rebuild both. ``extra``:
    more JSON entries for the description (they may not replace those).
    """
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    from frx_plugin.history import atomic_write

    architecture = getattr(type(module), "architecture", None)
    if not isinstance(architecture, str) or BACKBONE_ARCHITECTURES.get(architecture) is not type(module):
        raise TypeError(
            f"save_backbone: cannot save a {type(module).__name__}; it saves {', '.join(c.__name__ for c in BACKBONE_ARCHITECTURES.values())}")
    assert isinstance(module, (ResidualFaceNet, MobileFaceNetLike))  # its type is one of BACKBONE_ARCHITECTURES (above)
    description = {"architecture": architecture, **module.constructor_arguments(), "probe": probe}
    clash = sorted(set(extra or {}) & set(description))
    if clash:
        raise ValueError(f"save_backbone: extra entries {clash} would replace the backbone's own description")
    description.update(extra or {})
    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    atomic_write(Path(path), lambda tmp: save_file(state, str(tmp), metadata={BACKBONE_METADATA: json.dumps(description)}))


def load_backbone(path) -> tuple[nn.Module, dict]:
    """A backbone saved by :func:`save_backbone` (in eval mode) and its description.

    Reads with safetensors (no pickle); a missing file is a ``FileNotFoundError``, and a foreign or
    damaged one, an unknown architecture, missing constructor arguments or weights that do not fit
    are ``ValueError`` naming the path.
    """
    import json

    from frx_plugin.history import read_tagged_safetensors

    header, state = read_tagged_safetensors(path, BACKBONE_METADATA, "frx's save_backbone")
    try:
        description = json.loads(header)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: damaged {BACKBONE_METADATA!r} header ({exc})") from None
    if not isinstance(description, dict):
        raise ValueError(f"{path}: damaged {BACKBONE_METADATA!r} header (not a JSON object)")
    architecture = description.get("architecture")
    cls = BACKBONE_ARCHITECTURES.get(architecture) if isinstance(architecture, str) else None
    if cls is None:
        raise ValueError(f"{path}: unknown architecture {architecture!r}; known: {sorted(BACKBONE_ARCHITECTURES)}")
    names = cls.recorded_arguments
    missing = [n for n in names if n not in description]
    if missing:
        raise ValueError(f"{path}: the description lacks {missing} for a {architecture} backbone")
    kwargs: dict[str, Any] = {n: tuple(description[n]) if isinstance(description[n], list) else description[n] for n in names}
    try:
        module = cls(**kwargs)
        module.load_state_dict(state)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{path}: cannot rebuild the {architecture} backbone ({str(exc).splitlines()[0]})") from None
    return module.eval(), description

