"""Decoders ``G: z → x̂``: stage 1 of the paper's two-stage recovery, p(x|z).

A decoder turns an embedding back into a face. It takes a noise vector beside z, so p(x|z) is a
distribution and not one image: several samples of the same z show what the representation
leaves open. Decoders come through the ``frx_register_decoders`` hook; the built-in one is
:class:`ConvFaceDecoder`.

Training (:meth:`ConvFaceDecoder.fit`) uses the rows of one identity-disjoint fold's training
part, so the faces it decodes afterwards (the held-out fold) belong to people it never saw. Its
loss is a pixel loss plus an identity loss, ``1 − cos(f(x̂), z)`` with the recognition model f
(gradients flow into the decoder only; the model's own gradients are never touched). The pixel
loss is taken for the best of a few noise draws per face (implicit maximum likelihood, Li &
Malik 2018): a plain pixel loss would teach the decoder to ignore the noise and paint the mean
face, while the best-of-k loss makes the samples cover the faces that share an embedding. A
second pixel term asks the noise-free decoding G(z, 0) to match the face as well, so that what z
predicts stays with z and the noise only takes up what z leaves open.

The decoder whitens its input with the covariance of the training embeddings (shrunk slightly
towards its mean eigenvalue). A trained recogniser keeps nuisance attributes — pose, background,
glasses — in directions of z whose variance is 10⁻⁴ of the identity directions': linear probes
read them, and so must the decoder. Without whitening the decoder never picks them up and the
two-stage path misses what the direct path sees (on a ``frx demo`` backbone the rank correlation
of the two paths' R_k went from 0.57 to 0.88 with whitening and the noise-free term).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from frx_plugin.errors import DecoderDiverged, DecoderError
from frx_plugin.interfaces import DecoderFit, DecoderTask


def check_output_shape(output_shape: Any) -> tuple[int, int, int]:
    try:
        shape = tuple(int(v) for v in output_shape)
    except (TypeError, ValueError):
        raise DecoderError(f"decoder output_shape must be (C, H, W), got {output_shape!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise DecoderError(f"decoder output_shape must be (C, H, W) of positive sizes, got {output_shape!r}")
    return shape


class ConvDecoderNet(nn.Module):
    """``(z, noise) → image``: a linear map to a ``side/16`` square, four ×2 upsampling stages, sigmoid.

    Each stage is a 4×4 transposed convolution of stride 2 (2.25× cheaper than upsampling and a
    3×3 convolution at the larger size), batch norm and LeakyReLU; channels halve from
    ``8 · width`` to ``width``. ``side`` must be a multiple of 16 (64 → 4×4
    start, 112 → 7×7).
    """

    centre: torch.Tensor  # buffers (register_buffer in __init__)
    whiten: torch.Tensor

    def __init__(self, embedding_dim: int, side: int, channels: int = 3, noise_dim: int = 16, width: int = 8) -> None:
        super().__init__()
        if side % 16 or side < 16:
            raise DecoderError(f"the conv decoder makes square images whose side is a multiple of 16 (64, 112, …), got {side}")
        self.embedding_dim, self.noise_dim, self.side, self.channels = embedding_dim, noise_dim, side, channels
        self.start = side // 16
        widths = [8 * width, 4 * width, 2 * width, width]
        self.project = nn.Sequential(nn.Linear(embedding_dim + noise_dim, widths[0] * self.start**2), nn.LeakyReLU(0.2))
        stages: list[nn.Module] = []
        previous = widths[0]
        for w in widths:
            stages += [nn.ConvTranspose2d(previous, w, 4, 2, 1, bias=False), nn.BatchNorm2d(w), nn.LeakyReLU(0.2)]
            previous = w
        self.stages = nn.Sequential(*stages)
        self.out = nn.Conv2d(previous, channels, 3, 1, 1)
        # the input map z → (z − centre)·whiten; until a fit sets it, unit-norm z scaled to unit-size components
        self.register_buffer("centre", torch.zeros(embedding_dim))
        self.register_buffer("whiten", torch.eye(embedding_dim) * math.sqrt(embedding_dim))

    def set_whitening(self, z: torch.Tensor, shrinkage: float = 1e-3) -> None:
        """Whiten the input with the training embeddings' covariance, shrunk towards its mean eigenvalue.

        A trained recogniser keeps nuisance attributes in directions of tiny variance; whitened,
        they reach the decoder as strongly as the identity directions do.
        """
        z = z.to(torch.float64)
        centre = z.mean(0)
        cov = torch.cov((z - centre).T) if z.shape[0] > 1 else torch.zeros(z.shape[1], z.shape[1], dtype=torch.float64)
        cov = cov + shrinkage * float(cov.diagonal().mean().clamp_min(1e-12)) * torch.eye(z.shape[1], dtype=torch.float64)
        values, vectors = torch.linalg.eigh(cov)
        whiten = vectors @ torch.diag(values.clamp_min(1e-12).rsqrt()) @ vectors.T
        self.centre.copy_(centre.to(self.centre))
        self.whiten.copy_(whiten.to(self.whiten))

    def forward(self, z: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        h = self.project(torch.cat([(z - self.centre) @ self.whiten, noise], 1))
        h = h.view(z.shape[0], -1, self.start, self.start)
        return torch.sigmoid(self.out(self.stages(h)))


class ConvFaceDecoder:
    """The built-in decoder: :class:`ConvDecoderNet` trained with pixel + identity loss (see the module).

    ``embedding_dim``: D of the embeddings. ``output_shape``: ``(C, S, S)`` with S a multiple of
    16 (64×64 and 112×112 are the faces' sizes). ``noise_dim``: size of the noise input.
    ``width``: channels of the last stage. ``candidates``: noise draws per face for the best-of-k
    pixel loss. ``identity_weight``: weight of ``1 − cos(f(x̂), z)`` against the pixel MSE
    (which is scaled by 10, so both start near 1). ``mean_weight``: weight of the noise-free
    decoding's pixel loss. ``whiten_inputs``: whiten z with the training embeddings' covariance
    (see the module). ``lr``, ``batch_size``: Adam's step size and the batch.
    """

    name = "conv"
    spec_argument = None  # a spec takes options only: conv,width=16

    def __init__(
        self,
        embedding_dim: int,
        output_shape: tuple[int, int, int] = (3, 64, 64),
        noise_dim: int = 16,
        width: int = 8,
        candidates: int = 4,
        identity_weight: float = 1.0,
        lr: float = 2e-3,
        batch_size: int = 32,
        mean_weight: float = 1.0,
        whiten_inputs: bool = True,
    ) -> None:
        shape = check_output_shape(output_shape)
        if shape[1] != shape[2]:
            raise DecoderError(f"the conv decoder makes square images, got output_shape {shape}")
        for key, value in (("embedding_dim", embedding_dim), ("noise_dim", noise_dim), ("width", width), ("candidates", candidates),
                           ("batch_size", batch_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise DecoderError(f"ConvFaceDecoder: {key} must be a positive integer, got {value!r}")
        if not (identity_weight >= 0 and lr > 0):
            raise DecoderError(f"ConvFaceDecoder: identity_weight must be ≥ 0 and lr > 0, got {identity_weight!r}, {lr!r}")
        self.output_shape = shape
        self.embedding_dim = embedding_dim
        self.candidates = candidates
        self.identity_weight = float(identity_weight)
        self.mean_weight = float(mean_weight)
        self.whiten_inputs = bool(whiten_inputs)
        self.lr = float(lr)
        self.batch_size = batch_size
        self.net = ConvDecoderNet(embedding_dim, shape[1], shape[0], noise_dim, width)
        self.fits = 0

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.net.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.net.load_state_dict(state)

    def to(self, device: torch.device | str) -> ConvFaceDecoder:
        self.net.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def _check_z(self, z: torch.Tensor, where: str) -> None:
        if z.ndim != 2 or z.shape[1] != self.embedding_dim:
            raise DecoderError(f"{where}: the decoder takes embeddings (B, {self.embedding_dim}), got {tuple(z.shape)}")

    def _check_task(self, task: DecoderTask) -> None:
        z, images = task.embeddings, task.images
        self._check_z(z, "decoder fit")
        if images.ndim != 4 or tuple(images.shape[1:]) != self.output_shape or images.shape[0] != z.shape[0]:
            raise DecoderError(
                f"decoder fit: images must be (n={z.shape[0]}, {', '.join(map(str, self.output_shape))}) to match the "
                f"decoder's output_shape, got {tuple(images.shape)}"
            )
        if z.shape[0] < 2:
            raise DecoderError(f"decoder fit: {z.shape[0]} training faces; at least 2 are needed")
        if not isinstance(task.steps, int) or task.steps < 1:
            raise DecoderError(f"decoder fit: steps must be a positive integer, got {task.steps!r}")

    def _best_noise(self, zb: torch.Tensor, xb: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Best-of-k: of ``candidates`` noise draws per face, the one whose image is closest carries the gradient."""
        batch, noise_dim = zb.shape[0], self.net.noise_dim
        noise = torch.randn(batch, self.candidates, noise_dim, generator=generator).to(zb.device)
        if self.candidates == 1:
            return noise[:, 0]
        with torch.no_grad():
            self.net.eval()
            tries = self.net(zb.repeat_interleave(self.candidates, 0), noise.view(-1, noise_dim))
            self.net.train()
            error = (tries.view(batch, self.candidates, -1) - xb.view(batch, 1, -1)).pow(2).mean(2)
            best = error.argmin(1)
        return noise[torch.arange(batch), best]

    # -- training ------------------------------------------------------------------------------
    def fit(self, task: DecoderTask) -> DecoderFit:
        """Train for ``task.steps`` steps from the current weights (the warm start of a later pass).

        A NaN or infinite loss raises :class:`DecoderDiverged` and puts back the weights the fit
        started from, so the next pass starts from a sane state.
        """
        z, images = task.embeddings, task.images
        self._check_task(task)
        device = self.device
        generator = torch.Generator().manual_seed(int(task.seed) * 1_000_003 + self.fits)
        self.fits += 1
        start_state = self.state_dict()
        if self.whiten_inputs:
            self.net.set_whitening(z)
        params = [p for p in self.net.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=self.lr, betas=(0.5, 0.999))
        n, batch = z.shape[0], min(self.batch_size, z.shape[0])
        losses, pixel_losses, identity_losses = [], [], []
        self.net.train()
        try:
            for step in range(task.steps):
                rows = torch.randint(0, n, (batch,), generator=generator)
                zb = z[rows].to(device, torch.float32)
                xb = images[rows].to(device, torch.float32)
                chosen = self._best_noise(zb, xb, generator)
                decoded = self.net(zb, chosen)
                pixel = F.mse_loss(decoded, xb)
                loss = 10.0 * pixel
                if self.mean_weight > 0:
                    # the noise-free decoding must match the face too: what z predicts stays with z, and the
                    # noise is left only what z does not determine
                    loss = loss + 10.0 * self.mean_weight * F.mse_loss(self.net(zb, torch.zeros_like(chosen)), xb)
                identity_value = None
                if task.identity_embedder is not None and self.identity_weight > 0:
                    embedded = task.identity_embedder(decoded)
                    identity = (1.0 - F.cosine_similarity(embedded.float(), zb, dim=1)).mean()
                    loss = loss + self.identity_weight * identity
                    identity_value = float(identity.detach())
                if not bool(torch.isfinite(loss.detach())):
                    raise DecoderDiverged(f"the decoder's training loss is {float(loss.detach())} at step {step + 1} of {task.steps}")
                # gradients of the decoder only: the recognition model's .grad stay untouched
                grads = torch.autograd.grad(loss, params)
                for p, g in zip(params, grads):
                    p.grad = g
                optimizer.step()
                losses.append(float(loss.detach()))
                pixel_losses.append(float(pixel.detach()))
                if identity_value is not None:
                    identity_losses.append(identity_value)
        except DecoderDiverged:
            self.net.load_state_dict(start_state)
            raise
        finally:
            for p in params:
                p.grad = None
            self.net.eval()
        tenth = max(1, task.steps // 10)

        def mean(values: list[float], part: slice) -> float | None:
            chosen = values[part]
            return sum(chosen) / len(chosen) if chosen else None

        return DecoderFit(
            steps=task.steps,
            pixel_loss_start=mean(pixel_losses, slice(0, tenth)),
            pixel_loss_end=mean(pixel_losses, slice(-tenth, None)),
            identity_loss_start=mean(identity_losses, slice(0, tenth)),
            identity_loss_end=mean(identity_losses, slice(-tenth, None)),
            losses=losses,
        )

    # -- sampling ------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, z: torch.Tensor, samples: int = 1, seed: int = 0, batch_size: int = 256) -> torch.Tensor:
        """``(B, samples, C, H, W)``: ``samples`` faces per embedding, one noise draw each (seeded)."""
        self._check_z(z, "decode")
        if not isinstance(samples, int) or samples < 1:
            raise DecoderError(f"decode: samples must be a positive integer, got {samples!r}")
        self.net.eval()
        generator = torch.Generator().manual_seed(int(seed))
        noise = torch.randn(z.shape[0], samples, self.net.noise_dim, generator=generator)
        out = torch.empty(z.shape[0], samples, *self.output_shape)
        device = self.device
        flat_z = z.to(torch.float32).repeat_interleave(samples, 0)
        flat_noise = noise.view(-1, self.net.noise_dim)
        flat_out = out.view(-1, *self.output_shape)
        for start in range(0, flat_z.shape[0], batch_size):
            part = slice(start, start + batch_size)
            flat_out[part] = self.net(flat_z[part].to(device), flat_noise[part].to(device)).cpu()
        return out

    # -- its latent space (the decoded counterfactual path) -------------------------------------
    def latent(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, D)``: the decoder's latent code of each embedding — its input z itself."""
        self._check_z(z, "latent")
        return z.to(torch.float32)

    @torch.no_grad()
    def render_latent(self, latent: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """``(B, C, H, W)``: the noise-free decoding of latent codes (deterministic, the same image for the same code).

        The codes are embeddings: an edited one is put back on the unit sphere, where the decoder's inputs lie
        (off it, the whitening would magnify the radial part, in which the training embeddings do not vary).
        """
        self._check_z(latent, "render_latent")
        self.net.eval()
        device, out = self.device, []
        for start in range(0, latent.shape[0], batch_size):
            part = F.normalize(latent[start : start + batch_size].to(device, torch.float32), dim=1)
            out.append(self.net(part, torch.zeros(part.shape[0], self.net.noise_dim, device=device)).cpu())
        return torch.cat(out) if out else torch.empty(0, *self.output_shape)

    def copy(self) -> ConvFaceDecoder:
        return copy.deepcopy(self)
