"""How the ridge heads' penalties are chosen on held-out identities, from per-fold sufficient statistics alone.

The choice is nested in the outer identity-disjoint folds: the head that scores outer fold f gets a
penalty chosen without any of fold f's data (:func:`inner_fold_penalty`: λ relative to the training
scatter's mean eigenvalue, the exponent with the least held-out squared error).
"""

from __future__ import annotations

import torch

from frx_plugin.leakage.statistics import FoldStatistics

__all__ = ["INNER_EXPONENTS", "centred_statistics", "inner_fold_penalty"]

#: Inner-fold grid: λ = (mean eigenvalue per sample) × n_train × 10^k for these exponents k.
INNER_EXPONENTS = torch.linspace(-5.0, 2.0, 15, dtype=torch.float64, device="cpu")


def centred_statistics(stats: FoldStatistics):
    """Counts, means, centred scatter XᵀX − n x̄x̄ᵀ, centred cross-moments and target sums of squares."""
    n = stats.count.clamp_min(1.0)  # (S,)
    mean_x = stats.sum_x / n[:, None]  # (S, D)
    mean_y = stats.sum_y / n[:, None]  # (S, T)
    # not symmetrised: eigh and Cholesky read one triangle only
    scatter = stats.gram - (n[:, None] * mean_x)[:, :, None] * mean_x[:, None, :]
    cross = stats.cross - n[:, None, None] * mean_x[:, :, None] * mean_y[:, None, :]  # (S, D, T)
    yy = (stats.sum_yy - n[:, None] * mean_y**2).clamp_min(0.0)  # (S, T)
    return n, mean_x, mean_y, scatter, cross, yy


def _held_out_sse(stats: FoldStatistics, g: int, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Squared error of heads ``weight`` (D, L, T), ``bias`` (L, T) on fold ``g``, from its statistics.

    In fold g's own centred terms (less cancellation than the raw sums):
    SSE = S_yy − 2wᵀS_xy + wᵀS_xx w + n·(ȳ − x̄ᵀw − b)², S the centred scatter of fold g.
    """
    n = stats.count[g].clamp_min(1.0)
    mean_x, mean_y = stats.sum_x[g] / n, stats.sum_y[g] / n
    scatter = stats.gram[g] - n * torch.outer(mean_x, mean_x)
    cross = stats.cross[g] - n * torch.outer(mean_x, mean_y)  # (D, T)
    yy = stats.sum_yy[g] - n * mean_y**2  # (T,)
    dim, n_steps, n_columns = weight.shape
    flat = weight.reshape(dim, -1)
    quad = ((scatter @ flat) * flat).sum(0).reshape(n_steps, n_columns)
    linear = (cross[:, None, :] * weight).sum(0)  # (L, T)
    offset = mean_y - (mean_x @ flat).reshape(n_steps, n_columns) - bias
    return yy - 2 * linear + quad + stats.count[g] * offset**2


def inner_fold_penalty(fold_stats: FoldStatistics, exponents: torch.Tensor = INNER_EXPONENTS) -> torch.Tensor | None:
    """Per training set and column, the ridge λ with the least error on held-out *identities*.

    Nested inside the outer folds: the head that scores outer fold f gets a λ chosen without
    any of fold f's data. Inner training sets are the cyclic neighbour pairs of the folds
    that hold data, "all but folds a and b" for (a, b) = (0, 1), (1, 2), …, (F−1, 0): set (a, b)
    is fitted once for every λ of the grid (one eigendecomposition) and its squared error on
    fold b counts for outer fold a, its error on fold a for outer fold b (with 3 folds these
    are all pairs; with more, each outer fold is tuned on its two neighbours). Errors come from
    the held-out fold's sufficient statistics (:func:`_held_out_sse`). λ is relative to the
    mean eigenvalue of the training scatter, λ = mean(e)·10^k; per outer set and column the k
    with the least summed error is chosen and applied with the outer set's own mean
    eigenvalue. The head on all data takes the k with the least error over every evaluation.
    Unlike GCV, which approximates leave-one-image-out error, this never rewards memorising
    identities. ``fold_stats``: per-fold statistics (F slices). Returns (F + 1, T), or
    ``None`` when fewer than 3 folds hold data (then GCV decides).
    """
    n_folds, device = fold_stats.count.shape[0], fold_stats.count.device
    present = [f for f, count in enumerate(fold_stats.count.tolist()) if count > 0]
    if len(present) < 3:
        return None
    pairs = [(present[i], present[(i + 1) % len(present)]) for i in range(len(present))]
    per_fold = fold_stats.tensors()
    total = [t.sum(0) for t in per_fold]
    train = FoldStatistics(*(torch.stack([tot - p[a] - p[b] for a, b in pairs]) for tot, p in zip(total, per_fold)))
    _, mean_x, mean_y, scatter, cross, _ = centred_statistics(train)
    dim = scatter.shape[1]
    eigval, eigvec = torch.linalg.eigh(scatter)
    eigval = eigval.clamp_min(0.0)
    steps = 10.0 ** exponents.to(device, torch.float64)  # (L,)
    scale = (eigval.sum(1) / dim).clamp_min(torch.finfo(torch.float64).tiny)  # (P,)
    lam = scale[:, None] * steps[None, :]  # (P, L)
    proj = eigvec.transpose(1, 2) @ cross  # (P, D, T)
    n_pairs, n_steps, n_columns = len(pairs), len(steps), proj.shape[2]
    shrunk = proj[:, :, None, :] / (eigval[:, :, None, None] + lam[:, None, :, None])  # (P, D, L, T)
    weight = (eigvec @ shrunk.reshape(n_pairs, dim, -1)).reshape(n_pairs, dim, n_steps, n_columns)  # (P, D, L, T)
    bias = mean_y[:, None, :] - torch.einsum("pd,pdlt->plt", mean_x, weight)  # (P, L, T)
    sse = torch.zeros(n_folds + 1, len(steps), fold_stats.sum_y.shape[1], dtype=torch.float64, device=device)
    for i, (a, b) in enumerate(pairs):
        for held, outer in ((b, a), (a, b)):
            error = _held_out_sse(fold_stats, held, weight[i], bias[i])
            sse[outer] += error
            sse[n_folds] += error
    best = sse.argmin(1)  # (F + 1, T)
    for f in range(n_folds):
        if f not in present:
            best[f] = best[n_folds]
    # mean eigenvalue of each outer training set's scatter: (trace XᵀX − n‖x̄‖²) / D
    gram_trace = torch.diagonal(fold_stats.gram, dim1=1, dim2=2).sum(1)  # (F,)
    traces = torch.cat([gram_trace.sum() - gram_trace, gram_trace.sum()[None]])
    outer_n = torch.cat([fold_stats.count.sum() - fold_stats.count, fold_stats.count.sum()[None]]).clamp_min(1.0)
    outer_sum = torch.cat([fold_stats.sum_x.sum(0) - fold_stats.sum_x, fold_stats.sum_x.sum(0)[None]])
    outer_scale = ((traces - (outer_sum**2).sum(1) / outer_n) / dim).clamp_min(torch.finfo(torch.float64).tiny)
    return outer_scale[:, None] * steps[best]
