"""Verification accuracy on all pairs of a probe set: TAR at a target false-match rate.

Scores are cosine similarities of all genuine pairs (i < j, same identity) and all
impostor pairs (i < j, different identities), computed block by block in float64 so that
a probe set of a few thousand images never holds its N×N score matrix.

Threshold convention. With n impostor scores sorted in descending order
s₍₁₎ ≥ s₍₂₎ ≥ … ≥ s₍ₙ₎ and k = ⌊fmr·n⌋, the threshold is τ = s₍ₖ₊₁₎: the lowest impostor
score that leaves at most k (a fraction ≤ fmr) impostor scores strictly above it. A pair
is accepted when its score is strictly greater than τ, so the achieved false-match rate is
at most fmr (less when impostor scores tie at τ), and TAR is the fraction of genuine
scores > τ. Only the k + 1 highest impostor scores are kept while scanning.
"""

from __future__ import annotations

import math

import torch

from frx_plugin.recovery import AnalysisError
from frx_plugin.report import Verification

__all__ = ["verification", "pair_scores", "equal_error_rate"]

#: Score-matrix entries per block.
_BLOCK_ENTRIES = 4_000_000


def _prepare(embeddings: torch.Tensor, identity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(embeddings, torch.Tensor) or embeddings.ndim != 2 or not embeddings.dtype.is_floating_point:
        shape = tuple(embeddings.shape) if isinstance(embeddings, torch.Tensor) else type(embeddings).__name__
        raise AnalysisError(f"embeddings must be a 2-D floating-point tensor (N, D), got {shape}")
    n = embeddings.shape[0]
    if not isinstance(identity, torch.Tensor) or identity.ndim != 1 or identity.dtype.is_floating_point or identity.dtype == torch.bool:
        raise AnalysisError("identity must be a 1-D integer tensor, one entry per embedding")
    if identity.shape[0] != n:
        raise AnalysisError(f"identity has {identity.shape[0]} entries but embeddings have {n} rows")
    bad = int((~torch.isfinite(embeddings).all(1)).sum())
    if bad:
        raise AnalysisError(f"embeddings contain NaN or infinity in {bad} of {n} rows — did the training diverge?")
    z = torch.nn.functional.normalize(embeddings.detach().to("cpu", torch.float64), dim=1)
    return z, identity.detach().cpu()


def _blocks(z: torch.Tensor, identity: torch.Tensor):
    """Yield (genuine scores, impostor scores) of the pairs i < j, one block of rows i at a time."""
    n = z.shape[0]
    rows = max(1, _BLOCK_ENTRIES // max(n, 1))
    columns = torch.arange(n)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        scores = z[start:stop] @ z.T  # (r, N)
        upper = columns[None, :] > torch.arange(start, stop)[:, None]
        same = identity[start:stop, None] == identity[None, :]
        yield scores[upper & same], scores[upper & ~same]


def pair_scores(embeddings: torch.Tensor, identity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All genuine and all impostor cosine scores (float64), i < j. Holds every score: small N only."""
    z, identity = _prepare(embeddings, identity)
    genuine, impostor = zip(*_blocks(z, identity)) if z.shape[0] else ((), ())
    cat = lambda parts: torch.cat(parts) if parts else torch.empty(0, dtype=torch.float64)  # noqa: E731
    return cat(list(genuine)), cat(list(impostor))


@torch.no_grad()
def verification(embeddings: torch.Tensor, identity: torch.Tensor, fmr: float = 1e-3) -> Verification:
    """TAR at false-match rate ``fmr`` over all pairs of ``embeddings`` (N, D), scored by cosine.

    See the module docstring for the threshold convention (τ = the (⌊fmr·n⌋+1)-th highest
    impostor score; accept when score > τ). Raises :class:`AnalysisError` when there are
    no genuine pairs (every identity has one image) or no impostor pairs (one identity).
    """
    if not (isinstance(fmr, (int, float)) and 0.0 < float(fmr) < 1.0):
        raise AnalysisError(f"fmr must be a number in (0, 1), got {fmr!r}")
    z, identity = _prepare(embeddings, identity)
    n = z.shape[0]
    _, counts = torch.unique(identity, return_counts=True)
    n_genuine = int((counts * (counts - 1) // 2).sum())
    n_impostor = n * (n - 1) // 2 - n_genuine
    if n_genuine == 0:
        raise AnalysisError(
            f"identity: no genuine pairs — each of the {counts.numel()} identities has a single image; "
            "verification needs at least one identity with two images"
        )
    if n_impostor == 0:
        raise AnalysisError(f"identity: no impostor pairs — all {n} images belong to one identity")
    k = int(math.floor(float(fmr) * n_impostor))
    keep = k + 1  # the k + 1 highest impostor scores decide τ
    top = torch.empty(0, dtype=torch.float64)
    genuine_parts = []
    for genuine, impostor in _blocks(z, identity):
        genuine_parts.append(genuine)
        if impostor.numel():
            merged = torch.cat([top, impostor])
            top = torch.topk(merged, min(keep, merged.numel())).values if merged.numel() > keep else merged
    threshold = float(torch.sort(top, descending=True).values[k])
    genuine = torch.cat(genuine_parts)
    tar = float((genuine > threshold).double().mean())
    return Verification(tar=tar, fmr=float(fmr), threshold=threshold, genuine_pairs=n_genuine, impostor_pairs=n_impostor)


def equal_error_rate(genuine: torch.Tensor, impostor: torch.Tensor) -> tuple[float, float]:
    """(EER, threshold) from genuine and impostor scores (e.g. from :func:`pair_scores`).

    At each candidate threshold t (every observed score), FNMR(t) = P(genuine ≤ t) and
    FMR(t) = P(impostor > t); the EER is ½(FMR + FNMR) at the t where |FMR − FNMR| is least.
    """
    genuine = torch.as_tensor(genuine, dtype=torch.float64).flatten()
    impostor = torch.as_tensor(impostor, dtype=torch.float64).flatten()
    if genuine.numel() == 0 or impostor.numel() == 0:
        raise AnalysisError("equal_error_rate needs at least one genuine and one impostor score")
    candidates = torch.unique(torch.cat([genuine, impostor]))
    g = torch.sort(genuine).values
    i = torch.sort(impostor).values
    fnmr = torch.searchsorted(g, candidates, right=True).double() / g.numel()
    fmr = 1.0 - torch.searchsorted(i, candidates, right=True).double() / i.numel()
    best = int(torch.argmin((fmr - fnmr).abs()))
    return float(0.5 * (fmr[best] + fnmr[best])), float(candidates[best])
