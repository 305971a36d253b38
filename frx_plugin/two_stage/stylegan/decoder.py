"""The paper's own decoder as a two-stage decoder plugin: ``x̂ = G(mean_wplus + T(z))`` with a frozen StyleGAN2 G.

Ren et al. (TIFS 2024) decode a face embedding z through a latent transformer T (z → offsets of W+,
:class:`~frx_plugin.two_stage.stylegan.encoder.LatentTransformer`) added to a fixed mean W+ latent,
and a pretrained StyleGAN2 generator G. :class:`StyleGANFaceDecoder` is that decoder behind the
``frx_register_decoders`` protocol (registered as ``stylegan2``), in one of two modes:

- **the seed's encoder** (``encoder=ENC.pth`` with ``mean_latent=MEAN.pth``, the files the seed
  published for its own face models): T is used as it is, nothing is trained; ``fit`` is a no-op.
  The embeddings must be those of the face model the encoder was trained for.
- **trained for the model analysed** (no ``encoder``): T is trained with G frozen, as the paper's
  stage 1 is trained: an identity loss ``1 − cos(f(x̂), z)`` through the recognition model f plus a
  pixel loss against the face, on the training part of an identity-disjoint fold, warm-started from
  the previous fit (``state_dict`` holds T's weights only; G is read from its file). The last layer
  of each of T's heads starts at zero, so an untrained T decodes the mean face. Embeddings of another
  width than G's style width go through a fixed-width linear projection first (trained with T).

Images come out as RGB in [0, 1] (``(G + 1) / 2``, clamped, as the seed's ``lfw_recon.py`` scales
them) resized bilinearly (antialiased) to ``output_shape``; fits compare at the training faces' own
size. Decoding is deterministic by default: the checkpoint's own noise buffers (``noise="buffers"``);
``noise="random"`` draws fresh noise per sample from the decode's seed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from frx_plugin.errors import DecoderDiverged, DecoderError
from frx_plugin.interfaces import DecoderFit, DecoderTask
from frx_plugin.two_stage.stylegan.encoder import (
    LatentTransformer,
    load_latent_transformer,
    load_mean_wplus,
)
from frx_plugin.two_stage.stylegan.generator import (
    StyleGAN2Generator,
    load_rosinality_generator,
)

__all__ = ["StyleGANFaceDecoder", "cached_generator", "to_unit_range"]

NOISE_MODES = ("buffers", "random")
#: samples of z through the mapping for the mean W+ when no ``mean_latent`` file is given
MEAN_SAMPLES = 4096
_CACHE: dict[tuple, StyleGAN2Generator] = {}
_CACHE_SIZE = 2


def cached_generator(path: str | Path) -> StyleGAN2Generator:
    """The frozen generator in ``path`` (eval mode, no gradients), loaded once per file version and shared.

    The decoders of every fold use the same weights, which are never trained: one copy serves them all.
    """
    path = Path(path).expanduser()
    stat = path.stat() if path.is_file() else None
    key = (str(path.resolve()), stat.st_mtime_ns if stat else None, stat.st_size if stat else None)
    if key not in _CACHE:
        generator = load_rosinality_generator(path)  # a missing or foreign file: one CheckpointError line naming it
        generator.requires_grad_(False).eval()
        while len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = generator
    return _CACHE[key]


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """The generator's [-1, 1] output as RGB in [0, 1] (the seed's ``(x + 1) · 0.5``), clamped."""
    return ((images + 1.0) * 0.5).clamp(0.0, 1.0)


def _resize(images: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)


class _Mapper(nn.Module):
    """z → W+ offsets: an optional linear projection to the style width, then the latent transformer."""

    def __init__(self, transformer: LatentTransformer, embedding_dim: int) -> None:
        super().__init__()
        self.transformer = transformer
        self.project: nn.Module = nn.Identity()
        if embedding_dim != transformer.width:
            # a unit z maps to a vector of about unit norm, the scale the transformer expects of a unit embedding
            linear = nn.Linear(embedding_dim, transformer.width, bias=False)
            nn.init.normal_(linear.weight, std=1.0 / math.sqrt(transformer.width))
            self.project = linear

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.transformer(self.project(z))


class StyleGANFaceDecoder:
    """``G(mean_wplus + T(z))`` with a frozen StyleGAN2 ``generator`` (see the module).

    ``embedding_dim``: D of the embeddings. ``output_shape``: ``(3, H, W)`` of the images it returns
    (``None``: the generator's own size). ``generator``: a rosinality stylegan2-pytorch checkpoint
    (``{"g_ema": ...}``; the spec's argument). ``encoder``: the seed's latent transformer (``.pth``),
    used as it is; it needs ``mean_latent``, the seed's ``mean_wplus.pth``. Without ``encoder`` a
    latent transformer is trained for the model (``n_mlp``: its layers, the seed's 8), around
    ``mean_latent`` or, without it, the mean w of G's mapping. ``steps``: optimisation steps per fit
    (default: the caller's, e.g. ``TwoStageConfig.steps``). ``lr``, ``batch_size``: Adam's step size
    and the batch. ``identity_weight``, ``pixel_weight``: weights of ``1 − cos(f(x̂), z)`` and of 10×
    the pixel MSE. ``noise``: ``"buffers"`` (deterministic) or ``"random"``.
    """

    name = "stylegan2"
    spec_argument = "generator"

    def __init__(self, embedding_dim: int, output_shape: tuple[int, int, int] | None = None, generator: str | Path | None = None,
                 encoder: str | Path | None = None, mean_latent: str | Path | None = None, steps: int | None = None,
                 lr: float = 1e-3, batch_size: int = 8, identity_weight: float = 1.0, pixel_weight: float = 1.0,
                 noise: str = "buffers", n_mlp: int = 8) -> None:
        for key, value in (("embedding_dim", embedding_dim), ("batch_size", batch_size), ("n_mlp", n_mlp), ("steps", steps)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise DecoderError(f"stylegan2 decoder: {key} must be a positive integer, got {value!r}")
        if not (isinstance(lr, (int, float)) and lr > 0 and identity_weight >= 0 and pixel_weight >= 0):
            raise DecoderError(f"stylegan2 decoder: lr must be > 0 and the loss weights ≥ 0, got lr={lr!r}, "
                               f"identity_weight={identity_weight!r}, pixel_weight={pixel_weight!r}")
        if noise not in NOISE_MODES:
            raise DecoderError(f"stylegan2 decoder: noise must be one of {list(NOISE_MODES)}, got {noise!r}")
        if generator is None:
            raise DecoderError("stylegan2 decoder: no generator checkpoint; the spec is stylegan2:GENERATOR.pt[,encoder=ENC.pth,"
                               "mean_latent=MEAN.pth] (decoder_options={'generator': ...} in a TwoStageConfig)")
        if encoder is not None and mean_latent is None:
            raise DecoderError(f"stylegan2 decoder: encoder={encoder} needs the mean W+ latent it was trained with "
                               "(mean_latent=mean_wplus.pth, from the same place)")
        self.generator = cached_generator(generator)
        g = self.generator
        size = g.size
        shape = (3, size, size) if output_shape is None else tuple(int(v) for v in output_shape)
        if len(shape) != 3 or shape[0] != 3 or min(shape) < 1:
            raise DecoderError(f"stylegan2 decoder: it makes RGB images, output_shape must be (3, H, W), got {output_shape!r}")
        self.output_shape: tuple[int, int, int] = shape
        self.embedding_dim = embedding_dim
        self.uses_seed_encoder = encoder is not None
        self.mapper = _Mapper(self._transformer(encoder, n_mlp), embedding_dim)
        if mean_latent is not None:
            mean = load_mean_wplus(mean_latent, g.n_latent, g.style_dim)
        else:
            mean = g.mean_latent(MEAN_SAMPLES, generator=torch.Generator().manual_seed(0)).cpu().unsqueeze(1)
            mean = mean.expand(1, g.n_latent, g.style_dim).contiguous()
        self.mean = mean.to(g.input.input.device)
        self.steps, self.lr, self.batch_size = steps, float(lr), batch_size
        self.identity_weight, self.pixel_weight, self.noise = float(identity_weight), float(pixel_weight), noise
        self.fits = 0

    def _transformer(self, encoder: str | Path | None, n_mlp: int) -> LatentTransformer:
        g = self.generator
        if encoder is None:
            transformer = LatentTransformer(g.n_latent, n_mlp, g.style_dim)
            for head in transformer.heads:  # an untrained transformer decodes the mean face
                for parameter in list(head.children())[-1].parameters():
                    nn.init.zeros_(parameter)
            return transformer.to(g.input.input.device)
        transformer = load_latent_transformer(encoder)
        if (transformer.n_latents, transformer.width) != (g.n_latent, g.style_dim):
            raise DecoderError(f"encoder {encoder}: makes {transformer.n_latents}×{transformer.width} W+ offsets, but the generator "
                               f"takes {g.n_latent}×{g.style_dim} latents; pass the encoder saved with this generator")
        if transformer.width != self.embedding_dim:
            raise DecoderError(f"encoder {encoder}: maps {transformer.width}-d embeddings, the model analysed gives "
                               f"{self.embedding_dim}-d ones; it decodes only the face model it was trained for (leave "
                               "encoder= out to train a latent transformer for this model)")
        return transformer.requires_grad_(False).eval().to(g.input.input.device)

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The trained mapper's weights (nothing with the seed's encoder, which is read from its file)."""
        if self.uses_seed_encoder:
            return {}
        return {k: v.detach().clone() for k, v in self.mapper.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.uses_seed_encoder:
            if state:
                raise DecoderError("stylegan2 decoder: the seed's encoder takes no saved state (it was saved without encoder=?)")
            return
        try:
            self.mapper.load_state_dict(state)
        except RuntimeError as exc:
            raise DecoderError(f"stylegan2 decoder: the saved latent transformer does not fit this one "
                               f"({str(exc).splitlines()[0]})") from None

    def to(self, device: torch.device | str) -> StyleGANFaceDecoder:
        self.generator.to(device)
        self.mapper.to(device)
        self.mean = self.mean.to(device)
        return self

    @property
    def needs_training(self) -> bool:
        """False with the seed's encoder (used as it is), True for a latent transformer trained for the model."""
        return not self.uses_seed_encoder

    @property
    def device(self) -> torch.device:
        return self.mean.device

    # -- images --------------------------------------------------------------------------------
    def render(self, z: torch.Tensor, random: torch.Generator | None = None) -> torch.Tensor:
        """``(B, 3, S, S)`` in [0, 1] at the generator's size: ``(G(mean + T(z)) + 1) / 2``, differentiable in T."""
        if z.ndim != 2 or z.shape[1] != self.embedding_dim:
            raise DecoderError(f"stylegan2 decoder: takes embeddings (B, {self.embedding_dim}), got {tuple(z.shape)}")
        w_plus = self.mean + self.mapper(z.to(self.device, torch.float32))
        return to_unit_range(self.generator(w_plus, noise=self.noise, generator=random))

    # -- its latent space (the decoded counterfactual path) -------------------------------------
    @torch.no_grad()
    def latent(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, n_latent · style_dim)``: the W+ code ``mean + T(z)`` of each embedding, flattened."""
        if z.ndim != 2 or z.shape[1] != self.embedding_dim:
            raise DecoderError(f"stylegan2 decoder: takes embeddings (B, {self.embedding_dim}), got {tuple(z.shape)}")
        self.mapper.eval()
        out = [(self.mean + self.mapper(z[s : s + self.batch_size].to(self.device, torch.float32))).flatten(1).cpu()
               for s in range(0, z.shape[0], self.batch_size)]
        return torch.cat(out) if out else torch.empty(0, self.generator.n_latent * self.generator.style_dim)

    @torch.no_grad()
    def render_latent(self, latent: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1]: G of flattened W+ codes, with the generator's fixed noise buffers (deterministic)."""
        g = self.generator
        width = g.n_latent * g.style_dim
        if latent.ndim != 2 or latent.shape[1] != width:
            raise DecoderError(f"stylegan2 decoder: render_latent takes flattened W+ codes (B, {width}), got {tuple(latent.shape)}")
        step = batch_size or self.batch_size
        out = torch.empty(latent.shape[0], *self.output_shape)
        for start in range(0, latent.shape[0], step):
            w_plus = latent[start : start + step].to(self.device, torch.float32).view(-1, g.n_latent, g.style_dim)
            part = to_unit_range(g(w_plus, noise="buffers"))
            out[start : start + part.shape[0]] = _resize(part, self.output_shape[1:]).cpu()
        return out

    @torch.no_grad()
    def decode(self, z: torch.Tensor, samples: int = 1, seed: int = 0, batch_size: int | None = None) -> torch.Tensor:
        """``(B, samples, 3, H, W)`` in [0, 1]; with ``noise="buffers"`` every sample is the same image."""
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
            raise DecoderError(f"decode: samples must be a positive integer, got {samples!r}")
        self.mapper.eval()
        random = torch.Generator(device=self.device).manual_seed(int(seed)) if self.noise == "random" else None
        flat = z.to(torch.float32).repeat_interleave(samples, 0)
        out = torch.empty(flat.shape[0], *self.output_shape)
        step = batch_size or self.batch_size
        for start in range(0, flat.shape[0], step):
            part = self.render(flat[start : start + step], random)
            out[start : start + part.shape[0]] = _resize(part, self.output_shape[1:]).cpu()
        return out.view(z.shape[0], samples, *self.output_shape)

    # -- training ------------------------------------------------------------------------------
    def fit(self, task: DecoderTask) -> DecoderFit:
        """Train T for ``steps`` steps from its current weights (see the module).

        With the seed's encoder nothing is trained: the record (``steps`` 0) holds its losses on the first faces.

        ``task.images`` may be of any size: the decodings are resized to it for both losses. A NaN or
        infinite loss raises :class:`DecoderDiverged` and puts back the weights the fit started from.
        """
        steps = self.steps or task.steps
        z, images = task.embeddings, task.images
        if z.ndim != 2 or z.shape[1] != self.embedding_dim or images.ndim != 4 or images.shape[:2] != (z.shape[0], 3):
            raise DecoderError(f"stylegan2 decoder fit: embeddings (n, {self.embedding_dim}) and RGB images (n, 3, H, W) of the "
                               f"same n, got {tuple(z.shape)} and {tuple(images.shape)}")
        if self.uses_seed_encoder:
            return self._evaluate(task)
        if not isinstance(steps, int) or steps < 1 or z.shape[0] < 1:
            raise DecoderError(f"stylegan2 decoder fit: needs faces and a positive number of steps, got {z.shape[0]} and {steps!r}")
        random = torch.Generator().manual_seed(int(task.seed) * 1_000_003 + self.fits)
        noise_random = torch.Generator(device=self.device).manual_seed(int(task.seed) + self.fits) if self.noise == "random" else None
        self.fits += 1
        start_state = self.state_dict()
        params = [p for p in self.mapper.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=self.lr)
        batch = min(self.batch_size, z.shape[0])
        pixel_losses: list[float] = []
        identity_losses: list[float] = []
        losses: list[float] = []
        self.mapper.train()
        try:
            for step in range(steps):
                rows = torch.randint(0, z.shape[0], (batch,), generator=random)
                zb = z[rows].to(self.device, torch.float32)
                xb = images[rows].to(self.device, torch.float32)
                decoded = _resize(self.render(zb, noise_random), (xb.shape[-2], xb.shape[-1]))
                pixel = F.mse_loss(decoded, xb)
                loss = 10.0 * self.pixel_weight * pixel
                if task.identity_embedder is not None and self.identity_weight > 0:
                    identity = (1.0 - F.cosine_similarity(task.identity_embedder(decoded).float(), zb, dim=1)).mean()
                    loss = loss + self.identity_weight * identity
                    identity_losses.append(float(identity.detach()))
                if not bool(torch.isfinite(loss.detach())):
                    raise DecoderDiverged(f"the latent transformer's training loss is {float(loss.detach())} at step {step + 1} of {steps}")
                grads = torch.autograd.grad(loss, params)  # T's gradients only: G and the recognition model stay untouched
                for p, g in zip(params, grads):
                    p.grad = g
                optimizer.step()
                losses.append(float(loss.detach()))
                pixel_losses.append(float(pixel.detach()))
        except DecoderDiverged:
            self.mapper.load_state_dict(start_state)
            raise
        finally:
            for p in params:
                p.grad = None
            self.mapper.eval()
        return _fit_record(steps, pixel_losses, identity_losses, losses)


    @torch.no_grad()
    def _evaluate(self, task: DecoderTask) -> DecoderFit:
        """The seed's encoder is not trained: its losses on the first ``batch_size`` faces, as a fit with 0 steps."""
        zb = task.embeddings[: self.batch_size].to(self.device, torch.float32)
        xb = task.images[: self.batch_size].to(self.device, torch.float32)
        decoded = _resize(self.render(zb), (xb.shape[-2], xb.shape[-1]))
        pixel = [float(F.mse_loss(decoded, xb))]
        identity = []
        if task.identity_embedder is not None:
            identity = [float((1.0 - F.cosine_similarity(task.identity_embedder(decoded).float(), zb, dim=1)).mean())]
        record = _fit_record(1, pixel, identity, [])
        record.steps = 0
        return record


def _fit_record(steps: int, pixel: list[float], identity: list[float], losses: list[float]) -> DecoderFit:
    """The mean losses of the first and last tenth of the steps."""
    tenth = max(1, steps // 10)

    def mean(values: list[float], part: slice) -> Any:
        chosen = values[part]
        return sum(chosen) / len(chosen) if chosen else None

    return DecoderFit(steps=steps, pixel_loss_start=mean(pixel, slice(0, tenth)), pixel_loss_end=mean(pixel, slice(-tenth, None)),
                      identity_loss_start=mean(identity, slice(0, tenth)), identity_loss_end=mean(identity, slice(-tenth, None)),
                      losses=losses)
