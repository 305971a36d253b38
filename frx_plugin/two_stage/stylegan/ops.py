"""StyleGAN2's operations in plain PyTorch (CPU and CUDA, no compiled extension), as functions on tensors.

- :func:`fir_filter` — upsample by zero insertion, pad (or crop, for negative pads), convolve with a 2-D FIR
  kernel, downsample by striding: the "upfirdn2d" of StyleGAN2, as one depthwise convolution.
- :func:`bias_leaky_relu` — add a per-channel bias, leaky ReLU (slope 0.2), times √2 ("fused leaky ReLU").
- :func:`modulated_conv2d` — the style-modulated, optionally demodulated convolution, one grouped
  convolution for the whole batch (each sample its own weights), with the 2× upsampling variant
  (a strided transposed convolution followed by the FIR blur).
- :func:`fir_kernel` — the normalised 2-D kernel of a 1-D tap list such as ``[1, 3, 3, 1]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["LEAKY_GAIN", "LEAKY_SLOPE", "bias_leaky_relu", "fir_filter", "fir_kernel", "modulated_conv2d"]

LEAKY_SLOPE = 0.2
LEAKY_GAIN = math.sqrt(2.0)


def fir_kernel(taps: Sequence[float], gain: float = 1.0) -> torch.Tensor:
    """The outer product of ``taps`` with itself (a 2-D list is taken as it is), summing to ``gain``."""
    kernel = torch.as_tensor(taps, dtype=torch.float32)
    if kernel.ndim == 1:
        kernel = torch.outer(kernel, kernel)
    return kernel * (gain / kernel.sum())


def fir_filter(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1,
               pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Upsample ``x`` (N×C×H×W) by ``up`` (zeros between samples), pad each side of both axes by ``pad``
    (before, after; negative crops), convolve with ``kernel`` (a true convolution: the kernel is flipped),
    and keep every ``down``-th sample. The output side is ``(H·up + pad0 + pad1 − k) // down + 1``."""
    n, c, h, w = x.shape
    kh, kw = kernel.shape
    if up > 1:
        spread = x.new_zeros(n, c, h, up, w, up)
        spread[:, :, :, 0, :, 0] = x
        x = spread.reshape(n, c, h * up, w * up)  # each sample followed by up - 1 zeros, on both axes
    before, after = pad
    x = F.pad(x, [max(before, 0), max(after, 0), max(before, 0), max(after, 0)])
    x = x[:, :, max(-before, 0): x.shape[2] - max(-after, 0), max(-before, 0): x.shape[3] - max(-after, 0)]
    weight = torch.flip(kernel, [0, 1]).to(x.dtype).expand(c, 1, kh, kw)
    return F.conv2d(x, weight, stride=down, groups=c)


def bias_leaky_relu(x: torch.Tensor, bias: torch.Tensor | None = None, slope: float = LEAKY_SLOPE,
                    gain: float = LEAKY_GAIN) -> torch.Tensor:
    """``leaky_relu(x + bias) · gain``, the bias added along dimension 1 (features or channels)."""
    if bias is not None:
        x = x + bias.view(1, -1, *([1] * (x.ndim - 2)))
    return F.leaky_relu(x, slope) * gain


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True,
                     upsample: bool = False, blur: torch.Tensor | None = None,
                     blur_pad: tuple[int, int] = (0, 0), eps: float = 1e-8) -> torch.Tensor:
    """The modulated convolution of ``x`` (N×I×H×W) with the already scaled ``weight`` (O×I×k×k).

    ``styles`` (N×I) scale the weight's input channels per sample; with ``demodulate`` each sample's
    output channels are rescaled to unit norm (``eps`` under the square root). ``padding`` is ``k // 2``;
    with ``upsample`` the convolution is transposed with stride 2 and then blurred by ``blur``
    (padded by ``blur_pad``), doubling the side.
    """
    n, in_channels, height, width = x.shape
    out_channels, _, k, _ = weight.shape
    per_sample = weight.unsqueeze(0) * styles.view(n, 1, in_channels, 1, 1)
    if demodulate:
        per_sample = per_sample * torch.rsqrt(per_sample.square().sum(dim=(2, 3, 4), keepdim=True) + eps)
    x = x.reshape(1, n * in_channels, height, width)
    if upsample:
        per_sample = per_sample.transpose(1, 2).reshape(n * in_channels, out_channels, k, k)
        out = F.conv_transpose2d(x, per_sample, stride=2, groups=n)
        out = out.reshape(n, out_channels, out.shape[2], out.shape[3])
        if blur is None:
            raise ValueError("modulated_conv2d: upsample needs the blur kernel")
        return fir_filter(out, blur, pad=blur_pad)
    out = F.conv2d(x, per_sample.reshape(n * out_channels, in_channels, k, k), padding=k // 2, groups=n)
    return out.reshape(n, out_channels, out.shape[2], out.shape[3])
