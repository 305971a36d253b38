"""Fixed image features and ridge heads: what the probe-trained estimator reads faces with.

:func:`image_features` turns faces ``(B, 3, H, W)`` in [0, 1] into one row each: a 12×12 colour
thumbnail, histograms of gradient orientations (9 unsigned orientations, weighted by the gradient's
magnitude, on a 64×64 grey image, over 8×8 and 4×4 cells, square-rooted), the mean and standard
deviation of each colour channel, and an 8×8 map of chromaticity (r and g over r + g + b) and log
brightness — colour apart from the light falling on it, which a linear head cannot take from the
thumbnail (hair and iris colour under changing illumination). No learned part, so no recognition model: the features
of a face are the same whichever model is analysed.

:func:`fit_ridge` fits ridge heads on standardized features (mean and population standard deviation
of the training rows, a constant column scaled by 1), with an unpenalised intercept — the model of
scikit-learn's ``StandardScaler`` + ``Ridge(alpha)``, solved through the eigendecomposition of the
smaller of the scatter and the Gram matrix, so that a few hundred rows of a thousand features and a
few hundred thousand rows cost alike. :func:`ridge_path_predictions` gives held-out predictions for
a grid of penalties at once (the penalty is chosen on held-out identities); an infinite penalty
leaves the intercept alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["FEATURES_VERSION", "PENALTY_GRID", "image_features", "fit_ridge", "ridge_path_predictions", "standardize"]

#: Version of :func:`image_features`; part of every cache key built on them.
FEATURES_VERSION = "thumb12-hog9x8x4-colour-chroma8/2"
#: Penalties tried, as multiples of the number of training rows; the last, infinite, is the intercept alone (no
#: signal: every face gets the training mean, so an attribute the features do not carry is read as a constant).
PENALTY_GRID = (*(10.0 ** (k / 2) for k in range(-6, 5)), math.inf)

_ORIENTATIONS = 9


def _orientation_histograms(grey: torch.Tensor) -> torch.Tensor:
    """(B, 9, 64, 64): each pixel's gradient magnitude split between its two nearest orientation bins."""
    padded = F.pad(grey, (1, 1, 1, 1), mode="replicate")
    gx = padded[:, :, 1:-1, 2:] - padded[:, :, 1:-1, :-2]
    gy = padded[:, :, 2:, 1:-1] - padded[:, :, :-2, 1:-1]
    magnitude = torch.sqrt(gx * gx + gy * gy)
    angle = torch.remainder(torch.atan2(gy, gx), math.pi) * (_ORIENTATIONS / math.pi)  # [0, 9)
    low = torch.floor(angle)
    upper = angle - low
    low = low.long() % _ORIENTATIONS
    high = (low + 1) % _ORIENTATIONS
    out = torch.zeros(grey.shape[0], _ORIENTATIONS, *grey.shape[2:], dtype=grey.dtype, device=grey.device)
    out.scatter_add_(1, low, magnitude * (1 - upper))
    out.scatter_add_(1, high, magnitude * upper)
    return out


def image_features(images: torch.Tensor) -> torch.Tensor:
    """``(B, 1350)`` float32 features of faces ``(B, 3, H, W)`` in [0, 1] (any size of at least 8×8)."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"image features need RGB images (B, 3, H, W), got {got}")
    x = images.to(torch.float32).clamp(0, 1)
    thumb = F.adaptive_avg_pool2d(x, 12).flatten(1)
    grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    grey = F.interpolate(grey, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
    hist = _orientation_histograms(grey)
    parts = []
    for cells in (8, 4):
        pooled = F.adaptive_avg_pool2d(hist, cells).flatten(1)
        pooled = pooled / (pooled.norm(dim=1, keepdim=True) + 1e-6)
        parts.append(pooled.sqrt())
    colour = torch.cat([x.mean((2, 3)), x.std((2, 3), unbiased=False)], 1)
    coarse = F.adaptive_avg_pool2d(x, 8)
    total = coarse.sum(1, keepdim=True) + 1e-3
    chroma = torch.cat([(coarse[:, :2] / total).flatten(1), total.log().flatten(1)], 1)
    return torch.cat([thumb, *parts, colour, chroma], 1)


def standardize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population standard deviation of the columns of ``x`` (a constant column: scale 1)."""
    mean = x.mean(0)
    scale = x.std(0, unbiased=False)
    return mean, torch.where(scale > 1e-12 * (1 + mean.abs()), scale, torch.ones_like(scale))


def _spectral(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """For centred, scaled rows ``x`` (n, d) and centred targets ``y`` (n, m): eigenvalues e, the map M (d, r)
    from the eigenbasis to weights, and the projected targets B (r, m), so that w(α) = M diag(1/(e+α)) B."""
    n, d = x.shape
    if d <= n:
        e, v = torch.linalg.eigh(x.T @ x)
        return e.clamp_min(0), v, v.T @ (x.T @ y), v
    e, u = torch.linalg.eigh(x @ x.T)
    return e.clamp_min(0), x.T @ u, u.T @ y, u


def ridge_path_predictions(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
                           penalties: torch.Tensor) -> torch.Tensor:
    """(P, n_test, m): predictions of the ridge heads of each penalty (float64)."""
    x_train, x_test, y_train = x_train.to(torch.float64), x_test.to(torch.float64), y_train.to(torch.float64)
    mean, scale = standardize(x_train)
    y_mean = y_train.mean(0)
    e, m, b, _ = _spectral((x_train - mean) / scale, y_train - y_mean)
    a = ((x_test - mean) / scale) @ m  # (n_test, r)
    inverse = 1.0 / (e[None, :] + penalties.to(torch.float64)[:, None])  # (P, r)
    return torch.einsum("tr,pr,rm->ptm", a, inverse, b) + y_mean


def fit_ridge(x: torch.Tensor, y: torch.Tensor, penalty: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights ``(d, m)`` and bias ``(m,)`` on the raw features, one penalty per target column ``(m,)``.

    Predictions are ``x @ weight + bias``: standardization and intercept are folded in.
    """
    x, y = x.to(torch.float64), y.to(torch.float64)
    mean, scale = standardize(x)
    y_mean = y.mean(0)
    e, m, b, _ = _spectral((x - mean) / scale, y - y_mean)
    weight = (m @ (b / (e[:, None] + penalty.to(torch.float64)[None, :]))) / scale[:, None]
    return weight, y_mean - mean @ weight
