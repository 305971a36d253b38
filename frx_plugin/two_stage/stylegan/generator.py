"""A StyleGAN2 generator in frx's own PyTorch code, loading checkpoints in rosinality's stylegan2-pytorch layout.

The architecture is Karras et al.'s StyleGAN2 (config-e/f generator: a constant 4×4 input, two
modulated 3×3 convolutions per resolution with noise and a bias leaky ReLU, skip connections
through 1×1 "to RGB" convolutions upsampled with the [1, 3, 3, 1] FIR filter) with the module and
parameter names of rosinality's stylegan2-pytorch (``Generator(size, style_dim, n_mlp,
channel_multiplier)``), so its checkpoints load as they are::

    generator = load_rosinality_generator("550000.pt")      # the "g_ema" weights; size etc. read off the shapes
    images = generator(w_plus)                               # N×n_latent×style_dim → N×3×size×size in [-1, 1]

``forward`` takes W+ latents (rosinality's ``input_is_latent=True``); :meth:`StyleGAN2Generator.mapping`
is the z → w style MLP. Noise is deterministic by default: the checkpoint's own ``noises.noise_{i}``
buffers (rosinality's ``randomize_noise=False``); Ren et al.'s ``ReconModel`` leaves its generator's default,
fresh noise on every call, which is ``noise="random"`` here. Nothing here is compiled: the same code runs on
the CPU and on CUDA.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from frx_plugin.checkpoints import load_into, read_checkpoint, state_dict_in
from frx_plugin.errors import CheckpointError, DecoderError
from frx_plugin.two_stage.stylegan.ops import (
    bias_leaky_relu,
    fir_filter,
    fir_kernel,
    modulated_conv2d,
)

__all__ = ["EqualLinear", "StyleGAN2Generator", "generator_config", "load_rosinality_generator", "standard_channels"]

BLUR_TAPS = (1, 3, 3, 1)


def standard_channels(size: int, channel_multiplier: int = 2) -> dict[int, int]:
    """The width of each resolution up to ``size`` in StyleGAN2's config-f family (512 up to 32×32)."""
    widths = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}
    return {res: width * (channel_multiplier if res >= 64 else 1) for res, width in widths.items() if res <= size}


class EqualLinear(nn.Module):
    """A linear layer with the equalised learning rate: weight × lr_mul/√in, bias × lr_mul, optional bias leaky ReLU."""

    def __init__(self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0, activate: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activate = activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activate:
            return bias_leaky_relu(nn.functional.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return nn.functional.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class _PixelNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)


class _Kernel(nn.Module):
    """Holds a FIR kernel as the buffer ``kernel`` (a key of rosinality's checkpoints)."""

    kernel: torch.Tensor

    def __init__(self, gain: float):
        super().__init__()
        self.register_buffer("kernel", fir_kernel(BLUR_TAPS, gain))


class _ModulatedConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, style_dim: int,
                 demodulate: bool = True, upsample: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, out_channels, in_channels, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channels, bias_init=1.0)
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size ** 2)
        self.demodulate = demodulate
        self.upsample = upsample
        if upsample:  # the transposed convolution's output is (2H + k − 2) wide; the blur brings it to 2H
            excess = (len(BLUR_TAPS) - 2) - (kernel_size - 1)
            self.blur = _Kernel(gain=4.0)
            self.blur_pad = ((excess + 1) // 2 + 1, excess // 2 + 1)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return modulated_conv2d(x, self.weight[0] * self.scale, self.modulation(style), self.demodulate, self.upsample,
                                self.blur.kernel if self.upsample else None, self.blur_pad if self.upsample else (0, 0))


class _Noise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        return x if noise is None else x + self.weight * noise


class _BiasLeakyReLU(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bias_leaky_relu(x, self.bias)


class _StyledConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, style_dim: int, upsample: bool = False):
        super().__init__()
        self.conv = _ModulatedConv(in_channels, out_channels, 3, style_dim, upsample=upsample)
        self.noise = _Noise()
        self.activate = _BiasLeakyReLU(out_channels)

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        return self.activate(self.noise(self.conv(x, style), noise))


class _ToRGB(nn.Module):
    def __init__(self, in_channels: int, style_dim: int, upsample: bool = True):
        super().__init__()
        if upsample:
            self.upsample = _Kernel(gain=4.0)
        self.conv = _ModulatedConv(in_channels, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(x, style) + self.bias
        if skip is not None:  # the 2× upsampling of the skip image: pads (2, 1) around the 4-tap kernel
            out = out + fir_filter(skip, self.upsample.kernel, up=2, pad=(2, 1))
        return out


class _ConstantInput(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, 4, 4))


class StyleGAN2Generator(nn.Module):
    """StyleGAN2's generator (rosinality's parameter names). ``channels`` (resolution → width) overrides the
    widths that ``channel_multiplier`` gives (:func:`standard_channels`); ``lr_mlp`` is the mapping's learning-rate
    multiplier, which scales its weights at run time (0.01 in rosinality's code)."""

    def __init__(self, size: int = 256, style_dim: int = 512, n_mlp: int = 8, channel_multiplier: int = 2,
                 channels: dict[int, int] | None = None, lr_mlp: float = 0.01):
        super().__init__()
        log_size = int(math.log2(size)) if size >= 8 else 0
        if size < 8 or 2 ** log_size != size:
            raise DecoderError(f"StyleGAN2Generator: size must be a power of two ≥ 8, got {size}")
        self.size, self.style_dim, self.n_mlp = size, style_dim, n_mlp
        self.channel_multiplier = channel_multiplier if channels is None else None
        self.channels = dict(channels) if channels is not None else standard_channels(size, channel_multiplier)
        self.style = nn.Sequential(_PixelNorm(), *[EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activate=True)
                                                  for _ in range(n_mlp)])
        width = self.channels[4]
        self.input = _ConstantInput(width)
        self.conv1 = _StyledConv(width, width, style_dim)
        self.to_rgb1 = _ToRGB(width, style_dim, upsample=False)
        self.convs, self.to_rgbs = nn.ModuleList(), nn.ModuleList()
        for res in (2 ** i for i in range(3, log_size + 1)):
            self.convs.append(_StyledConv(width, self.channels[res], style_dim, upsample=True))
            self.convs.append(_StyledConv(self.channels[res], self.channels[res], style_dim))
            self.to_rgbs.append(_ToRGB(self.channels[res], style_dim))
            width = self.channels[res]
        self.num_layers = 2 * (log_size - 2) + 1
        self.n_latent = 2 * log_size - 2
        self.noises = nn.Module()
        for i in range(self.num_layers):
            side = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, side, side))

    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        """The style MLP: z (N×style_dim, any scale: it is pixel-normalised first) → w (N×style_dim)."""
        return self.style(z)

    @torch.no_grad()
    def mean_latent(self, n: int = 4096, generator: torch.Generator | None = None) -> torch.Tensor:
        """The mean w of ``n`` standard normal z through the mapping (1×style_dim), the usual truncation centre."""
        device = self.input.input.device
        z = torch.randn(n, self.style_dim, generator=generator, device="cpu" if generator is None else generator.device)
        return self.mapping(z.to(device)).mean(0, keepdim=True)

    def _noise_list(self, noise: str | Sequence[torch.Tensor | None] | None, batch: int, like: torch.Tensor,
                    generator: torch.Generator | None) -> list[torch.Tensor | None]:
        if noise is None:
            return [None] * self.num_layers
        if isinstance(noise, str):
            if noise == "buffers":
                return [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]
            if noise == "random":
                sides = [2 ** ((i + 5) // 2) for i in range(self.num_layers)]
                return [torch.randn(batch, 1, s, s, generator=generator, device=like.device if generator is None
                                    else generator.device).to(like) for s in sides]
            raise DecoderError(f"StyleGAN2Generator: noise must be 'buffers', 'random', None or a list of "
                               f"{self.num_layers} tensors, got {noise!r}")
        noise = list(noise)
        if len(noise) != self.num_layers:
            raise DecoderError(f"StyleGAN2Generator: {len(noise)} noise tensors, expected {self.num_layers}")
        return noise

    def forward(self, w_plus: torch.Tensor, noise: str | Sequence[torch.Tensor | None] | None = "buffers",
                generator: torch.Generator | None = None) -> torch.Tensor:
        """W+ latents (N×n_latent×style_dim; N×style_dim is one w for every layer) → images N×3×size×size, in the
        generator's own range (about [-1, 1]). ``noise``: ``"buffers"`` (the checkpoint's fixed noise, the
        default), ``"random"`` (fresh per sample, from ``generator``), ``None`` (no noise) or one tensor per layer."""
        if w_plus.ndim == 2 and w_plus.shape[1] == self.style_dim:
            w_plus = w_plus.unsqueeze(1).expand(-1, self.n_latent, -1)
        if w_plus.ndim != 3 or tuple(w_plus.shape[1:]) != (self.n_latent, self.style_dim):
            raise DecoderError(f"StyleGAN2Generator: W+ latents must be N×{self.n_latent}×{self.style_dim}, "
                               f"got {tuple(w_plus.shape)}")
        noises = self._noise_list(noise, w_plus.shape[0], w_plus, generator)
        out = self.input.input.expand(w_plus.shape[0], -1, -1, -1)
        out = self.conv1(out, w_plus[:, 0], noises[0])
        skip = self.to_rgb1(out, w_plus[:, 1])
        for j, to_rgb in enumerate(self.to_rgbs):
            out = self.convs[2 * j](out, w_plus[:, 2 * j + 1], noises[2 * j + 1])
            out = self.convs[2 * j + 1](out, w_plus[:, 2 * j + 2], noises[2 * j + 2])
            skip = to_rgb(out, w_plus[:, 2 * j + 3], skip)
        return skip


_WHAT = "StyleGAN2 generator checkpoint"


def generator_config(state: dict[str, torch.Tensor], path: str | Path = "<state dict>") -> dict:
    """``StyleGAN2Generator``'s arguments read off a rosinality ``g_ema`` state dict's tensor shapes."""
    try:
        style_dim = state["conv1.conv.modulation.weight"].shape[1]
        channels = {4: int(state["input.input"].shape[1])}
        n_rgb = sum(1 for k in state if k.startswith("to_rgbs.") and k.endswith(".conv.weight"))
        for j in range(n_rgb):
            channels[2 ** (j + 3)] = int(state[f"convs.{2 * j}.conv.weight"].shape[1])
    except (KeyError, IndexError) as exc:
        raise CheckpointError(f"{_WHAT} {path}: not a rosinality StyleGAN2 generator (no {exc} to read its shape "
                              "from)") from None
    size = 2 ** (n_rgb + 2)
    n_mlp = sum(1 for k in state if k.startswith("style.") and k.endswith(".weight"))
    config: dict = {"size": size, "style_dim": int(style_dim), "n_mlp": n_mlp}
    for multiplier in (2, 1, 4, 8):
        if standard_channels(size, multiplier) == channels:
            return {**config, "channel_multiplier": multiplier}
    return {**config, "channels": channels}


def load_rosinality_generator(path: str | Path, key: str = "g_ema", lr_mlp: float = 0.01) -> StyleGAN2Generator:
    """The generator in a rosinality stylegan2-pytorch checkpoint (``torch.save({"g_ema": ...})``), in eval mode.

    Size, style_dim, n_mlp and the widths (``channel_multiplier``) are read off the tensor shapes; a file
    that does not fit is one :class:`~frx_plugin.errors.CheckpointError` line naming it and the keys at fault.
    """
    state = state_dict_in(read_checkpoint(path, _WHAT), path, _WHAT, key=key)
    generator = StyleGAN2Generator(**generator_config(state, path), lr_mlp=lr_mlp)
    # the FIR kernels are constants of the architecture: a checkpoint without them loads with frx's own
    return load_into(generator, state, path, _WHAT, optional=lambda k: k.endswith(("blur.kernel", "upsample.kernel")))
