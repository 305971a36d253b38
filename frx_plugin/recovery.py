"""Direct recovery: how well linear probes recover each attribute from the embeddings (DESIGN.md §2).

The fast path of an analysis pass, run every epoch. Plain functions on tensors:

``identity_folds``      identity-disjoint folds (every identity on one side of each split)
``_fold_statistics``    per-fold sufficient statistics XᵀX, XᵀY, Σx, Σy, Σy², n, accumulated by the
                        torchmetrics metric ``frx_plugin.metrics.ProbeStatistics`` (which
                        all-reduces them under DDP); a training set's statistics are total − fold
``_fit_heads``          closed-form ridge heads for all target columns at once, penalty by GCV
``auroc`` / ``balanced_accuracy`` / ``r2_score``
                        exact metrics, weighted by a (B, N) matrix of bootstrap weights at once
``analyze_embeddings``  the whole pass → :class:`~frx_plugin.report.Report`

Targets. A binary attribute is one 0/1 column, a categorical one with C classes C one-hot
columns (one-vs-rest scores), a continuous one its value. Each column gets its own ridge
head ``score = zᵀw + b`` fitted on centred training embeddings (the intercept ``b`` comes
from the training means).

Ridge penalty (per training set and target column): chosen on held-out *identities* by an
inner cross-validation over the other folds, computed from the per-fold sufficient statistics
alone (see ``_inner_fold_penalty``). With fewer than 3 non-empty folds it falls back to
generalised cross-validation over a log grid of 33 penalties λ = s·10^k, k ∈ [−6, 2], s =
trace(S)/D the mean eigenvalue of the centred training scatter S = XᵀX − n x̄x̄ᵀ. With
S = V diag(e) Vᵀ and c = Vᵀ Xᵀy (centred),

    RSS(λ) = yᵀy − Σ_d c_d² (e_d + 2λ) / (e_d + λ)²,      df(λ) = 1 + Σ_d e_d / (e_d + λ)

and GCV(λ) = n·RSS(λ) / (n − df(λ))². GCV approximates leave-one-*image*-out error, which on
clustered identities rewards memorising identities; that is why the inner identity-disjoint
choice comes first. Discrete columns are scored without the training prior in the intercept
(pooled over folds that term is anti-correlated with the held-out labels).

Metrics (pooled over the held-out folds, each labelled sample scored once by the head that
did not see its identity): binary — AUROC (Mann–Whitney, ties count 1/2) and balanced
accuracy with the threshold at the midpoint of the two training-class mean scores (the
equal-prior LDA cut, computed from the sufficient statistics); categorical — macro
one-vs-rest AUROC over the classes present and balanced accuracy of the argmax of the C
scores; continuous — R² = 1 − SSE/SST with SST around the mean of the evaluated labels.
Intervals: percentile 95% intervals from a Poisson bootstrap over identities: in replicate
r each identity gets a Poisson(1) multiplicity drawn from hash(seed, r, identity)
(:func:`frx_plugin.randomness.poisson_bootstrap_weights`), carried by all its images — the
streaming form of resampling identities with replacement, shared with
:func:`frx_plugin.streaming.analyze_stream`.

``fit_probe_heads`` turns pass-1 statistics into :class:`ProbeHeads` (heads, thresholds,
score ranges, per-attribute reasons) for both the in-memory and the streaming scoring pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from frx_plugin.errors import AnalysisError
from frx_plugin.attributes import Attribute, AttributeSchema
from frx_plugin.report import AttributeLeakage, Report

__all__ = [
    "AnalysisError",
    "identity_folds",
    "analyze_embeddings",
    "fit_probe_heads",
    "ProbeHeads",
    "MetricEstimate",
    "auroc",
    "auroc_columns",
    "balanced_accuracy",
    "r2_score",
]

#: GCV grid: λ = mean eigenvalue × 10^k for these exponents k.
PENALTY_EXPONENTS = torch.linspace(-6.0, 2.0, 33, dtype=torch.float64)
#: Inner-fold grid: λ = (mean eigenvalue per sample) × n_train × 10^k for these exponents k.
INNER_EXPONENTS = torch.linspace(-5.0, 2.0, 15, dtype=torch.float64)
#: ``analyze_embeddings`` converts embeddings of up to this many entries to float64 once (else per block).
_CONVERT_ONCE_ENTRIES = 64 * 2**20
#: Replicates per chunk are chosen so that chunk × N stays under this many entries.
_BOOTSTRAP_CHUNK_ENTRIES = 4_000_000


# --------------------------------------------------------------------------- folds


def _identity_index(identity: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Identities as 0..K-1 (sorted by label) and K."""
    uniq, index = torch.unique(identity, return_inverse=True)
    return index, int(uniq.numel())


def _check_identity(identity: torch.Tensor, n: int | None = None) -> None:
    if not isinstance(identity, torch.Tensor) or identity.ndim != 1:
        shape = tuple(identity.shape) if isinstance(identity, torch.Tensor) else type(identity).__name__
        raise AnalysisError(f"identity must be a 1-D integer tensor, got {shape}")
    if identity.dtype.is_floating_point or identity.dtype.is_complex or identity.dtype == torch.bool:
        raise AnalysisError(f"identity must be an integer tensor, got {identity.dtype}")
    if n is not None and identity.shape[0] != n:
        raise AnalysisError(f"identity has {identity.shape[0]} entries but embeddings have {n} rows")


def identity_folds(identity: torch.Tensor, n_folds: int, seed: int = 0) -> torch.Tensor:
    """Fold id (0..n_folds-1, int64) of every sample, identity-disjoint and balanced by sample count.

    Identities are shuffled with ``seed``, ordered by sample count (largest first, the
    shuffle breaking ties) and each is put into the fold that holds the fewest samples so
    far (greedy). With equal-sized identities this is a seeded round-robin.
    """
    _check_identity(identity)
    if not isinstance(n_folds, int) or isinstance(n_folds, bool) or n_folds < 2:
        raise AnalysisError(f"n_folds must be an integer of at least 2, got {n_folds!r}")
    n = int(identity.shape[0])
    if n < n_folds:
        raise AnalysisError(f"{n} samples are fewer than n_folds={n_folds}; every fold needs at least one sample")
    index, k = _identity_index(identity)
    if k < 2:
        raise AnalysisError(f"identity: only {k} identity in {n} samples; identity-disjoint folds need at least 2 identities")
    if k < n_folds:
        raise AnalysisError(
            f"identity: {k} identities are fewer than n_folds={n_folds}; every fold needs its own identities"
        )
    generator = torch.Generator().manual_seed(int(seed))
    counts = torch.bincount(index, minlength=k)
    shuffled = torch.randperm(k, generator=generator)
    order = shuffled[torch.argsort(counts[shuffled], descending=True, stable=True)]
    fold_of_identity = torch.empty(k, dtype=torch.int64)
    if bool((counts == counts[0]).all()):  # equal sizes: the greedy rule is a round-robin
        fold_of_identity[order] = torch.arange(k) % n_folds
        return fold_of_identity[index]
    loads = [0] * n_folds
    for ident, count in zip(order.tolist(), counts[order].tolist()):
        fold = min(range(n_folds), key=loads.__getitem__)
        fold_of_identity[ident] = fold
        loads[fold] += count
    return fold_of_identity[index]


# --------------------------------------------------------------------------- sufficient statistics


@dataclass
class FoldStatistics:
    """Sufficient statistics of ridge heads, one slice per fold (or per training set).

    Shapes: ``count`` (F,), ``sum_x`` (F, D), ``gram`` (F, D, D) = XᵀX, ``sum_y`` (F, T),
    ``cross`` (F, D, T) = XᵀY, ``sum_yy`` (F, T). All float64. Sums over folds and
    differences between sets are plain tensor arithmetic, and a distributed version
    all-reduces these tensors.
    """

    count: torch.Tensor
    sum_x: torch.Tensor
    gram: torch.Tensor
    sum_y: torch.Tensor
    cross: torch.Tensor
    sum_yy: torch.Tensor

    def columns(self, cols: torch.Tensor) -> "FoldStatistics":
        return FoldStatistics(self.count, self.sum_x, self.gram, self.sum_y[:, cols], self.cross[:, :, cols], self.sum_yy[:, cols])

    def training_sets(self) -> "FoldStatistics":
        """Statistics of the F training sets (total − fold f), then of all data: F + 1 slices."""

        def train(t: torch.Tensor) -> torch.Tensor:
            total = t.sum(0, keepdim=True)
            return torch.cat([total - t, total])

        return FoldStatistics(*(train(t) for t in (self.count, self.sum_x, self.gram, self.sum_y, self.cross, self.sum_yy)))


#: Rows per block when statistics are accumulated (bounds the float64 copy of a block).
GRAM_BLOCK_ROWS = 4096


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 for float64 embeddings, float32 for every other floating dtype."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


#: Column panels of the symmetric product XᵀX (only panels on and above the diagonal are multiplied).
_GRAM_PANELS = 4


def _add_gram(out: torch.Tensor, x: torch.Tensor) -> None:
    """``out += xᵀx``, multiplying only the panels on and above the diagonal (~⅝ of the work)."""
    d = x.shape[1]
    if d < 128:
        out += x.T @ x
        return
    edges = [d * i // _GRAM_PANELS for i in range(_GRAM_PANELS + 1)]
    for a, b in zip(edges[:-1], edges[1:]):
        block = x[:, a:b].T @ x[:, a:]  # rows a:b, columns a:
        out[a:b, a:] += block
        if b < d:
            out[b:, a:b] += block[:, b - a :].T


def _fold_statistics(x: torch.Tensor, y: torch.Tensor, folds: torch.Tensor, n_folds: int) -> FoldStatistics:
    """Per-fold statistics of rows ``x`` (N, D) and targets ``y`` (N, T), float64.

    Products and sums are float64 throughout (each block of at most ``GRAM_BLOCK_ROWS`` rows of
    one fold is converted on its own), so the statistics do not depend on how the rows are
    batched or sharded beyond float64 rounding: the 1e-6 agreement of a DDP pass with a
    single-process one rests on this.
    """
    f64 = torch.float64
    d, t = x.shape[1], y.shape[1]
    count = torch.zeros(n_folds, dtype=f64)
    sum_x = torch.zeros(n_folds, d, dtype=f64)
    gram = torch.zeros(n_folds, d, d, dtype=f64)
    sum_y = torch.zeros(n_folds, t, dtype=f64)
    cross = torch.zeros(n_folds, d, t, dtype=f64)
    sum_yy = torch.zeros(n_folds, t, dtype=f64)
    folds = folds.long()
    sizes = torch.bincount(folds, minlength=n_folds).tolist()
    if len(sizes) > n_folds:
        raise ValueError(f"fold ids must be below n_folds={n_folds}, got {len(sizes) - 1}")
    order = None if bool((folds[1:] >= folds[:-1]).all()) else torch.argsort(folds, stable=True)
    start = 0
    for f, size in enumerate(sizes):
        for begin in range(start, start + size, GRAM_BLOCK_ROWS):
            end = min(begin + GRAM_BLOCK_ROWS, start + size)
            rows = slice(begin, end) if order is None else order[begin:end]
            xb, yb = x[rows].to(f64), y[rows].to(f64)
            count[f] += end - begin
            sum_x[f] += xb.sum(0)
            _add_gram(gram[f], xb)
            sum_y[f] += yb.sum(0)
            cross[f] += xb.T @ yb
            sum_yy[f] += (yb * yb).sum(0)
        start += size
    return FoldStatistics(count, sum_x, gram, sum_y, cross, sum_yy)


def score_rows(x: torch.Tensor, folds: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(N, T) float64 scores: row i scored by head ``folds[i]`` (``weight`` (S, D, T), ``bias`` (S, T)).

    In float64 (a float32 product rounds each score differently with the batch shape, which
    would make results depend on chunking); every pass scores through this function.
    """
    scores = torch.empty(x.shape[0], weight.shape[2], dtype=torch.float64)
    folds = folds.long()
    if bool((folds[1:] >= folds[:-1]).all()):  # grouped by fold: slices, no gathers
        start = 0
        for f, size in enumerate(torch.bincount(folds).tolist()):
            if size:
                scores[start : start + size] = x[start : start + size].to(torch.float64) @ weight[f] + bias[f]
            start += size
        return scores
    for f in torch.unique(folds).tolist():
        rows = (folds == f).nonzero().squeeze(1)
        scores[rows] = x[rows].to(torch.float64) @ weight[f] + bias[f]
    return scores


# --------------------------------------------------------------------------- ridge heads


@dataclass
class Heads:
    """Linear heads ``score = x @ weight[s] + bias[s]`` for S training sets and T columns."""

    weight: torch.Tensor  # (S, D, T)
    bias: torch.Tensor  # (S, T)
    penalty: torch.Tensor  # (S, T) the λ chosen by GCV


def _centred(stats: FoldStatistics):
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


def _inner_fold_penalty(fold_stats: FoldStatistics, exponents: torch.Tensor = INNER_EXPONENTS) -> torch.Tensor | None:
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
    n_folds = fold_stats.count.shape[0]
    present = [f for f in range(n_folds) if float(fold_stats.count[f]) > 0]
    if len(present) < 3:
        return None
    pairs = [(present[i], present[(i + 1) % len(present)]) for i in range(len(present))]
    per_fold = _astuple(fold_stats)
    total = [t.sum(0) for t in per_fold]
    train = FoldStatistics(*(torch.stack([tot - p[a] - p[b] for a, b in pairs]) for tot, p in zip(total, per_fold)))
    _, mean_x, mean_y, scatter, cross, _ = _centred(train)
    dim = scatter.shape[1]
    eigval, eigvec = torch.linalg.eigh(scatter)
    eigval = eigval.clamp_min(0.0)
    steps = 10.0 ** exponents.to(torch.float64)  # (L,)
    scale = (eigval.sum(1) / dim).clamp_min(torch.finfo(torch.float64).tiny)  # (P,)
    lam = scale[:, None] * steps[None, :]  # (P, L)
    proj = eigvec.transpose(1, 2) @ cross  # (P, D, T)
    n_pairs, n_steps, n_columns = len(pairs), len(steps), proj.shape[2]
    shrunk = proj[:, :, None, :] / (eigval[:, :, None, None] + lam[:, None, :, None])  # (P, D, L, T)
    weight = (eigvec @ shrunk.reshape(n_pairs, dim, -1)).reshape(n_pairs, dim, n_steps, n_columns)  # (P, D, L, T)
    bias = mean_y[:, None, :] - torch.einsum("pd,pdlt->plt", mean_x, weight)  # (P, L, T)
    sse = torch.zeros(n_folds + 1, len(steps), fold_stats.sum_y.shape[1], dtype=torch.float64)
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


#: Per training set, up to this many distinct penalties are solved by Cholesky factorisations
#: (one each); more share one eigendecomposition.
_MAX_CHOLESKY_PENALTIES = 6


def _solve_ridge(scatter: torch.Tensor, cross: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """W (S, D, T) with (scatter[s] + penalty[s, t]·I) W[s, :, t] = cross[s, :, t]."""
    weight = torch.empty_like(cross)
    eye = torch.eye(scatter.shape[1], dtype=scatter.dtype)
    for s in range(scatter.shape[0]):
        values, which = torch.unique(penalty[s], return_inverse=True)
        if values.numel() <= _MAX_CHOLESKY_PENALTIES:
            factors = [torch.linalg.cholesky_ex(scatter[s] + float(lam) * eye) for lam in values]
            if all(int(info) == 0 for _, info in factors):
                for j, (factor, _) in enumerate(factors):
                    cols = (which == j).nonzero().squeeze(1)
                    weight[s][:, cols] = torch.cholesky_solve(cross[s][:, cols], factor)
                continue
        eigval, eigvec = torch.linalg.eigh(scatter[s])
        eigval = eigval.clamp_min(0.0)
        weight[s] = eigvec @ ((eigvec.T @ cross[s]) / (eigval[:, None] + penalty[s][None, :]))
    return weight


def _astuple(stats: FoldStatistics) -> tuple[torch.Tensor, ...]:
    return (stats.count, stats.sum_x, stats.gram, stats.sum_y, stats.cross, stats.sum_yy)


def _fit_heads(stats: FoldStatistics, exponents: torch.Tensor = PENALTY_EXPONENTS, penalty: torch.Tensor | None = None) -> Heads:
    """Ridge heads for every training set (slice) of ``stats`` and every column.

    ``penalty`` (S, T) gives λ (see :func:`_inner_fold_penalty`); without it, λ is chosen
    by GCV (see the module docstring). ``stats`` holds training-set statistics (e.g.
    :meth:`FoldStatistics.training_sets`), not per-fold ones.
    """
    n, mean_x, mean_y, scatter, cross, yy = _centred(stats)
    if penalty is not None:
        weight = _solve_ridge(scatter, cross, penalty)
        bias = mean_y - torch.einsum("sd,sdt->st", mean_x, weight)
        return Heads(weight, bias, penalty)
    eigval, eigvec = torch.linalg.eigh(scatter)
    eigval = eigval.clamp_min(0.0)  # (S, D)
    proj = eigvec.transpose(1, 2) @ cross  # (S, D, T)
    d = eigval.shape[1]
    scale = (eigval.sum(1) / d).clamp_min(torch.finfo(torch.float64).tiny)  # (S,)
    grid = scale[:, None] * (10.0 ** exponents.to(torch.float64))[None, :]  # (S, L)
    denom = eigval[:, None, :] + grid[:, :, None]  # (S, L, D)
    shrink = (eigval[:, None, :] + 2 * grid[:, :, None]) / denom**2  # (S, L, D)
    rss = (yy[:, None, :] - torch.einsum("sld,sdt->slt", shrink, proj**2)).clamp_min(0.0)  # (S, L, T)
    dof = 1.0 + (eigval[:, None, :] / denom).sum(2)  # (S, L)
    residual_dof = n[:, None] - dof
    gcv = n[:, None, None] * rss / residual_dof[:, :, None].clamp_min(1e-12) ** 2
    gcv = torch.where((residual_dof > 0.5)[:, :, None], gcv, torch.full_like(gcv, math.inf))
    best = gcv.argmin(1)  # (S, T)
    penalty = torch.gather(grid, 1, best)  # (S, T)

    weight = eigvec @ (proj / (eigval[:, :, None] + penalty[:, None, :]))  # (S, D, T)
    bias = mean_y - torch.einsum("sd,sdt->st", mean_x, weight)
    return Heads(weight, bias, penalty)


def _class_midpoints(stats: FoldStatistics, heads: Heads) -> torch.Tensor:
    """Per training set and 0/1 column: midpoint of the mean scores of its two training classes.

    Class 1's mean embedding is XᵀY/n₁ (Y is the 0/1 indicator), class 0's (Σx − XᵀY)/n₀,
    so the threshold comes from the sufficient statistics. (S, T); NaN where a class is empty.
    """
    n1 = stats.sum_y  # (S, T)
    n0 = stats.count[:, None] - n1
    mean1 = stats.cross / n1[:, None, :]  # (S, D, T)
    mean0 = (stats.sum_x[:, :, None] - stats.cross) / n0[:, None, :]
    score1 = (mean1 * heads.weight).sum(1) + heads.bias
    score0 = (mean0 * heads.weight).sum(1) + heads.bias
    return 0.5 * (score0 + score1)


# --------------------------------------------------------------------------- metrics


def _as_weight_matrix(weights: torch.Tensor | None, n: int) -> tuple[torch.Tensor, bool]:
    """(B, N) floating weights (float64 unless given as float32) and whether the input was one row."""
    if weights is None:
        return torch.ones(1, n, dtype=torch.float64), True
    weights = torch.as_tensor(weights)
    if weights.dtype != torch.float32:
        weights = weights.to(torch.float64)
    if weights.ndim == 1:
        return weights[None, :], True
    return weights, False


def auroc(scores: torch.Tensor, positive: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Exact (weighted) area under the ROC curve: P(score⁺ > score⁻) + ½·P(tie).

    ``scores`` (N,), ``positive`` (N,) bool; ``weights`` None, (N,) or (B, N) — one row per
    bootstrap replicate, all computed from a single sort and one cumulative sum per row:
    each positive counts the negative weight below its score plus half the negative
    weight tied with it. float32 weights (bootstrap multiplicities) are accumulated in
    float32 (cumulative sums exact below 2²⁴, final sums to ~1e-7 relative), others in
    float64. Returns a 0-d tensor (or (B,)); NaN where one class has zero weight.
    """
    scores = torch.as_tensor(scores, dtype=torch.float64)
    positive = torch.as_tensor(positive).bool()
    w, single = _as_weight_matrix(weights, scores.numel())
    order = torch.argsort(scores)
    sorted_scores, pos = scores[order], positive[order]
    w = w.index_select(1, order)
    pos_f = pos.to(w.dtype)
    negative_w = w * (1.0 - pos_f)
    through = torch.cumsum(negative_w, 1)  # negative weight at or below each position
    _, group, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    if bool((counts == 1).all()):
        # no ties: a positive's own entry adds no negative weight
        numerator = ((w * through) @ pos_f).to(torch.float64)
    else:
        ends = torch.cumsum(counts, 0) - 1  # last index of each tie group
        first, last = (ends - counts + 1)[group], ends[group]
        below = through.index_select(1, first) - negative_w.index_select(1, first)  # strictly below the tie group
        at_or_below = through.index_select(1, last)
        numerator = ((w * (below + at_or_below)) @ pos_f).to(torch.float64) * 0.5
    positive_total = (w @ pos_f).to(torch.float64)
    denominator = positive_total * (w.sum(1).to(torch.float64) - positive_total)
    out = torch.where(denominator > 0, numerator / denominator.clamp_min(1e-300), torch.full_like(numerator, math.nan))
    return out[0] if single else out


def auroc_columns(scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Exact unweighted AUROC of every column of ``scores`` (N, C) against ``positive`` (N, C) bool.

    The Mann–Whitney statistic from mid-ranks (ties count ½), all columns from one batched
    sort: (Σ rank⁺ − n⁺(n⁺ + 1)/2) / (n⁺n⁻). Equals :func:`auroc` without weights. (C,)
    float64; NaN where a column has one class only.
    """
    values, order = torch.sort(torch.as_tensor(scores).T.contiguous(), dim=1)
    pos = torch.as_tensor(positive).bool().T.gather(1, order)
    c, n = values.shape
    index = torch.arange(n).expand(c, n)
    starts = torch.ones(c, n, dtype=torch.bool)
    starts[:, 1:] = values[:, 1:] != values[:, :-1]
    ends = torch.ones(c, n, dtype=torch.bool)
    ends[:, :-1] = starts[:, 1:]
    first = torch.cummax(torch.where(starts, index, 0), 1).values
    last = torch.cummin(torch.where(ends, index, n).flip(1), 1).values.flip(1)
    midrank = (first + last).to(torch.float64) * 0.5 + 1.0
    n_pos = pos.sum(1).to(torch.float64)
    n_neg = n - n_pos
    rank_sum = (midrank * pos).sum(1)
    denominator = n_pos * n_neg
    area = (rank_sum - n_pos * (n_pos + 1) * 0.5) / denominator.clamp_min(1.0)
    return torch.where(denominator > 0, area, torch.full_like(area, math.nan))


def balanced_accuracy(predicted: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None, num_classes: int | None = None) -> torch.Tensor:
    """(Weighted) mean per-class recall over the classes of ``target`` that carry weight.

    ``predicted``, ``target`` (N,) int class indices; ``weights`` None, (N,) or (B, N).
    Matches scikit-learn's ``balanced_accuracy_score(target, predicted, sample_weight=w)``.
    """
    predicted = torch.as_tensor(predicted).long()
    target = torch.as_tensor(target).long()
    w, single = _as_weight_matrix(weights, target.numel())
    c = int(num_classes if num_classes is not None else max(int(target.max()), int(predicted.max())) + 1)
    onehot = torch.nn.functional.one_hot(target, c).to(w.dtype)  # (N, C)
    hits = w @ (onehot * (predicted == target).to(w.dtype)[:, None])  # (B, C)
    totals = w @ onehot
    hits, totals = hits.to(torch.float64), totals.to(torch.float64)
    recall = torch.where(totals > 0, hits / totals.clamp_min(1e-300), torch.full_like(hits, math.nan))
    out = torch.nanmean(recall, 1)
    return out[0] if single else out


def r2_score(predicted: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """(Weighted) coefficient of determination 1 − SSE/SST, SST around the weighted mean of ``target``.

    ``weights`` None, (N,) or (B, N); NaN where SST is zero. Matches scikit-learn's
    ``r2_score(target, predicted, sample_weight=w)`` where SST > 0.
    """
    predicted = torch.as_tensor(predicted, dtype=torch.float64)
    target = torch.as_tensor(target, dtype=torch.float64)
    w, single = _as_weight_matrix(weights, target.numel())
    w = w.to(torch.float64)
    center = target.mean()  # numerically kinder sums; SST is shift-invariant
    t = target - center
    total = w.sum(1)
    sum_t = w @ t
    sst = w @ (t * t) - sum_t**2 / total.clamp_min(1e-300)
    sse = w @ ((target - predicted) ** 2)
    out = torch.where(sst > 1e-12 * (w @ (t * t)).clamp_min(1e-300), 1.0 - sse / sst.clamp_min(1e-300), torch.full_like(sst, math.nan))
    return out[0] if single else out


def _leakage_of(metric: str, value: float) -> float:
    if math.isnan(value):
        return math.nan
    return max(0.0, 2.0 * value - 1.0) if metric == "auroc" else max(0.0, value)


# --------------------------------------------------------------------------- targets


@dataclass
class _Target:
    """Where an attribute's columns sit in the target matrix, and what can be computed for it."""

    attribute: Attribute
    cols: torch.Tensor  # column indices into Y
    labelled: torch.Tensor  # (N,) bool
    reason: str | None = None


def build_targets(labels: Mapping[str, torch.Tensor], schema: AttributeSchema, n: int) -> tuple[torch.Tensor, list[_Target]]:
    columns: list[torch.Tensor] = []
    targets: list[_Target] = []
    start = 0
    for attribute in schema:
        raw = labels[attribute.name]
        labelled = ~attribute.missing_mask(raw)
        if attribute.kind == "binary":
            block = (raw == 1).to(torch.float64)[:, None]
        elif attribute.kind == "categorical":
            block = torch.nn.functional.one_hot(raw.long().clamp_min(0), attribute.num_classes).to(torch.float64)
            block = block * labelled[:, None].to(torch.float64)
        else:
            block = torch.where(labelled, raw.to(torch.float64), torch.zeros((), dtype=torch.float64))[:, None]
        columns.append(block)
        targets.append(_Target(attribute, torch.arange(start, start + block.shape[1]), labelled))
        start += block.shape[1]
    y = torch.cat(columns, 1) if columns else torch.zeros(n, 0, dtype=torch.float64)
    return y, targets


def _class_name(attribute: Attribute, index: int) -> str:
    return attribute.classes[index] if attribute.classes else str(index)


def _reason_from_statistics(attribute: Attribute, per_fold: FoldStatistics, train: FoldStatistics, held_out_folds: list[int], n_rows: int) -> str | None:
    """Why this attribute's leakage is undefined (None if it is defined), from statistics alone.

    ``per_fold`` / ``train``: per-fold (F slices) and training-set (F + 1 slices) statistics of
    this attribute's labelled rows and target columns. Class counts are Σy of the 0/1 columns;
    a continuous attribute's variance is Σy²/n − (Σy/n)², called constant below 10⁻¹² of Σy²/n
    (the same rule as for each training part). ``n_rows``: all rows of the probe set.
    """
    n_labelled = int(round(float(per_fold.count.sum())))
    if n_labelled == 0:
        return f"no labelled samples (all {n_rows} labels missing); {'AUROC' if attribute.discrete else 'R²'} undefined"
    totals = per_fold.sum_y.sum(0)
    if attribute.discrete:
        counts = [n_labelled - float(totals[0]), float(totals[0])] if attribute.kind == "binary" else totals.tolist()
        present = [c for c, k in enumerate(counts) if k > 0.5]
        if len(present) < 2:
            return f"only one class ({_class_name(attribute, present[0])!r}) among labelled samples; AUROC undefined"
        n_train = train.count
        for f in held_out_folds:
            if attribute.kind == "binary":
                n1 = float(train.sum_y[f, 0])
                counts = [float(n_train[f]) - n1, n1]
            else:
                counts = train.sum_y[f].tolist()
            seen = [c for c, k in enumerate(counts) if k > 0.5]
            if len(seen) < 2:
                only = f"only one class ({_class_name(attribute, seen[0])!r})" if seen else "no labelled samples"
                return f"the training part of fold {f} has {only}; its head and the held-out AUROC are undefined"
        return None
    if n_labelled < 3:
        return f"only {n_labelled} labelled samples; R² undefined"
    mean = float(totals[0]) / n_labelled
    mean_square = float(per_fold.sum_yy.sum(0)[0]) / n_labelled
    if mean_square - mean**2 <= 1e-12 * max(1.0, mean_square):
        return f"all labelled values are equal ({mean:g}); R² undefined"
    for f in held_out_folds:
        n_f = float(train.count[f])
        if n_f < 2:
            return f"the training part of fold {f} has {int(n_f)} labelled samples; its head and the held-out R² are undefined"
        col = 0
        var = float(train.sum_yy[f, col]) / n_f - (float(train.sum_y[f, col]) / n_f) ** 2
        if var <= 1e-12 * max(1.0, float(train.sum_yy[f, col]) / n_f):
            return f"the training part of fold {f} has constant labels; its head and the held-out R² are undefined"
    return None


def _unseen_class_warnings(attribute: Attribute, train_counts: torch.Tensor, folds_with_data: list[int]) -> list[str]:
    """Classes whose held-out samples of a fold are scored by a head that never saw the class.

    ``train_counts`` (F + 1, C): class counts of the F training sets, then of all data.
    """
    out = []
    total = train_counts[-1]
    for f in folds_with_data:
        unseen = [c for c in range(attribute.num_classes) if train_counts[f, c] < 0.5 < total[c]]
        if unseen:
            names = ", ".join(repr(_class_name(attribute, c)) for c in unseen)
            out.append(
                f"attribute {attribute.name!r}: class(es) {names} occur only in fold {f}; "
                "their held-out scores there come from a head that never saw them"
            )
    return out


# --------------------------------------------------------------------------- evaluation


def _evaluate(
    target: _Target,
    scores: torch.Tensor,
    predicted_binary: torch.Tensor | None,
    raw: torch.Tensor,
    weights: torch.Tensor | None,
    column_auroc: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Metrics of one attribute on its labelled rows, for each row of ``weights`` (B, N_labelled).

    ``weights`` None: the unweighted point estimate; ``column_auroc`` (width,) may then carry
    each score column's AUROC, already computed (by :func:`auroc_columns`).
    """
    attribute = target.attribute
    if attribute.kind == "continuous":
        return {"r2": r2_score(scores[:, 0], raw.to(torch.float64), weights)}
    classes = raw.long()

    def area(c: int, positive: torch.Tensor) -> torch.Tensor:
        return column_auroc[c] if column_auroc is not None else auroc(scores[:, c], positive, weights)

    if attribute.kind == "binary":
        value = area(0, classes == 1)
        return {"auroc": value, "balanced_accuracy": balanced_accuracy(predicted_binary.long(), classes, weights, 2)}
    per_class = [area(c, classes == c) for c in torch.unique(classes).tolist()]
    macro = torch.nanmean(torch.stack(per_class, -1), -1)
    predicted = scores.argmax(1)
    return {"auroc": macro, "balanced_accuracy": balanced_accuracy(predicted, classes, weights, attribute.num_classes)}


def _undefined(attribute: Attribute, metric: str, n: int, reason: str) -> AttributeLeakage:
    extra = {"balanced_accuracy": math.nan} if attribute.discrete else {}
    nan = math.nan
    return AttributeLeakage(attribute.name, attribute.kind, attribute.group, metric, nan, nan, nan, nan, nan, nan, n, extra, reason)


def _check_embeddings(embeddings: torch.Tensor) -> torch.Tensor:
    if not isinstance(embeddings, torch.Tensor):
        raise AnalysisError(f"embeddings must be a tensor, got {type(embeddings).__name__}")
    if embeddings.ndim != 2:
        raise AnalysisError(f"embeddings must be 2-D (N, D), got shape {tuple(embeddings.shape)}")
    if not embeddings.dtype.is_floating_point:
        raise AnalysisError(f"embeddings must be floating point, got {embeddings.dtype}")
    n, d = embeddings.shape
    if d == 0:
        raise AnalysisError("embeddings have 0 columns (D = 0)")
    x = embeddings.detach().to("cpu")
    x = x.to(_work_dtype(x))
    if not bool(torch.isfinite(x.sum(1)).all()):  # cheap screen: a NaN/inf makes its row sum NaN/inf
        k = int((~torch.isfinite(x).all(1)).sum())
        if k:
            raise AnalysisError(f"embeddings contain NaN or infinity in {k} of {n} rows — did the training diverge?")
        raise AnalysisError(
            f"embeddings hold values too large to sum in {x.dtype} (largest |value| {float(x.abs().max()):.3g}); "
            "rescale them (e.g. L2-normalise)"
        )
    return x


def _check_folds(folds: torch.Tensor, identity: torch.Tensor, n: int) -> tuple[torch.Tensor, int, list[str]]:
    if not isinstance(folds, torch.Tensor) or folds.ndim != 1 or folds.dtype.is_floating_point or folds.dtype == torch.bool:
        raise AnalysisError("folds must be a 1-D integer tensor of fold ids, one per sample")
    if folds.shape[0] != n:
        raise AnalysisError(f"folds has {folds.shape[0]} entries but embeddings have {n} rows")
    uniq, index = torch.unique(folds.cpu(), return_inverse=True)
    if uniq.numel() < 2:
        raise AnalysisError(f"folds: all samples are in one fold ({int(uniq[0])}); at least 2 folds are needed")
    warnings = []
    n_identities = int(identity.max()) + 1
    lowest = torch.full((n_identities,), n, dtype=torch.int64).scatter_reduce(0, identity, index, "amin")
    highest = torch.full((n_identities,), -1, dtype=torch.int64).scatter_reduce(0, identity, index, "amax")
    shared = int((lowest != highest).sum())
    if shared:
        warnings.append(
            f"folds: {shared} identities have samples on both sides of a split; the leakage then measures "
            "memory of identities, not attributes (DESIGN.md §2)"
        )
    return index.long(), int(uniq.numel()), warnings


# --------------------------------------------------------------------------- head fitting (shared by both passes)

#: Score range of each column: training mean score ± this many standard deviations (see ``ProbeHeads``).
SCORE_RANGE_STDS = 8.0


@dataclass
class ProbeHeads:
    """Everything the scoring pass needs, fitted from pass-1 statistics alone.

    ``weight`` (F + 1, D, T), ``bias`` / ``penalty`` / ``threshold`` (F + 1, T): head s < F was
    fitted without fold s (it scores fold s), head F on all data; ``threshold`` is the binary
    midpoint cut. ``score_low`` / ``score_high`` (F, T): per fold, a range holding practically
    every held-out score of the column in that fold (head f's mean score on fold f's labelled
    rows ± ``SCORE_RANGE_STDS`` standard deviations, sd² = wᵀ·Cov·w with fold f's covariance),
    for histograms. ``label_centre`` (T,):
    the mean label of each column's labelled rows (continuous sums are centred on it).
    Per attribute (by name): ``cols`` its target columns, ``reason`` why it is undefined (None if
    defined), ``n_labelled``, ``present`` the classes with labelled samples (discrete kinds).
    ``warnings``: fitting warnings (classes a fold's head never saw).
    """

    weight: torch.Tensor
    bias: torch.Tensor
    penalty: torch.Tensor
    threshold: torch.Tensor
    score_low: torch.Tensor
    score_high: torch.Tensor
    label_centre: torch.Tensor
    cols: dict[str, torch.Tensor]
    reason: dict[str, str | None]
    n_labelled: dict[str, int]
    present: dict[str, list[int]]
    warnings: list[str]
    n_rows: int

    @property
    def n_folds(self) -> int:
        return self.weight.shape[0] - 1


def _score_range(stats: FoldStatistics, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(F, T) low and high of the held-out scores: head f on the rows of fold f (``stats`` per fold)."""
    n = stats.count.clamp_min(1.0)  # (F,)
    mean_x = stats.sum_x / n[:, None]
    cov = stats.gram / n[:, None, None] - mean_x[:, :, None] * mean_x[:, None, :]
    w, b = weight[:-1], bias[:-1]  # (F, D, T), (F, T)
    mean = torch.einsum("fd,fdt->ft", mean_x, w) + b
    sd = torch.einsum("fdt,fde,fet->ft", w, cov, w).clamp_min(0.0).sqrt()
    low, high = mean - SCORE_RANGE_STDS * sd, mean + SCORE_RANGE_STDS * sd
    bad = ~(torch.isfinite(low) & torch.isfinite(high) & (high > low))
    centre = torch.nan_to_num(mean, nan=0.0, posinf=0.0, neginf=0.0)
    return torch.where(bad, centre - 1.0, low), torch.where(bad, centre + 1.0, high)


def fit_probe_heads(
    shared: FoldStatistics,
    masked: Mapping[str, FoldStatistics],
    schema: AttributeSchema,
    folds: Sequence[int] | None = None,
    fit_discrete: bool = True,
) -> ProbeHeads:
    """Ridge heads of every attribute from ``ProbeStatistics.compute()`` = (``shared``, ``masked``).

    ``fit_discrete=False`` leaves the heads of binary and categorical columns at zero (their
    reasons, counts and warnings are still computed): for callers that fit those heads
    another way (the logistic heads of :func:`analyze_embeddings`).

    Attributes named in ``masked`` (those with missing labels) get heads from their labelled rows
    only, one group each; the others share one group (one XᵀX). ``folds``: the fold ids that hold
    data (default: those with a positive count). Undefined attributes (no labels, one class, a
    constant value, a training part without two classes) are decided from the statistics alone
    and get a ``reason``; their heads are computed but meaningless.
    """
    n_folds = shared.count.shape[0]
    fold_has = [int(f) for f in folds] if folds is not None else [f for f in range(n_folds) if float(shared.count[f]) > 0]
    _, targets = build_targets({a.name: _empty_labels(a) for a in schema}, schema, 0)
    n_columns = sum(t.cols.numel() for t in targets)
    d = shared.sum_x.shape[1]
    f64 = torch.float64
    weight = torch.zeros(n_folds + 1, d, n_columns, dtype=f64)
    bias = torch.zeros(n_folds + 1, n_columns, dtype=f64)
    penalty = torch.zeros(n_folds + 1, n_columns, dtype=f64)
    midpoint = torch.full((n_folds + 1, n_columns), math.nan, dtype=f64)
    low = torch.zeros(n_folds, n_columns, dtype=f64)
    high = torch.zeros(n_folds, n_columns, dtype=f64)
    centre = torch.zeros(n_columns, dtype=f64)
    reason: dict[str, str | None] = {}
    n_labelled: dict[str, int] = {}
    present: dict[str, list[int]] = {}
    warnings: list[str] = []
    n_rows = int(round(float(shared.count.sum())))

    complete = [t for t in targets if t.attribute.name not in masked]
    groups: list[tuple[list[_Target], FoldStatistics]] = []
    if complete:
        groups.append((complete, shared.columns(torch.cat([t.cols for t in complete]))))
    for t in targets:
        if t.attribute.name in masked:
            groups.append(([t], masked[t.attribute.name]))
    for members, stats in groups:
        train = stats.training_sets()
        cols = torch.cat([t.cols for t in members])
        held_out_folds = [f for f in fold_has if float(stats.count[f]) > 0.5]
        offset = 0
        for t in members:
            attribute, width = t.attribute, t.cols.numel()
            local = torch.arange(offset, offset + width)
            offset += width
            name = attribute.name
            per_fold = stats.columns(local)
            reason[name] = _reason_from_statistics(attribute, per_fold, train.columns(local), held_out_folds, n_rows)
            n_labelled[name] = int(round(float(stats.count.sum())))
            if attribute.discrete:
                totals = per_fold.sum_y.sum(0)
                counts = [n_labelled[name] - float(totals[0]), float(totals[0])] if attribute.kind == "binary" else totals.tolist()
                present[name] = [c for c, k in enumerate(counts) if k > 0.5]
            if reason[name] is None and attribute.kind == "categorical":
                warnings += _unseen_class_warnings(attribute, train.sum_y[:, local], held_out_folds)
        fit = torch.tensor([fit_discrete or not t.attribute.discrete for t in members for _ in range(t.cols.numel())])
        if bool(fit.all()):
            heads = _fit_heads(train, penalty=_inner_fold_penalty(stats))
        else:
            heads = Heads(torch.zeros(train.gram.shape[0], d, fit.numel(), dtype=f64), *(torch.zeros(train.gram.shape[0], fit.numel(), dtype=f64) for _ in range(2)))
            if bool(fit.any()):
                some = fit.nonzero().squeeze(1)
                partial = _fit_heads(train.columns(some), penalty=_inner_fold_penalty(stats.columns(some)))
                heads.weight[:, :, some], heads.bias[:, some], heads.penalty[:, some] = partial.weight, partial.bias, partial.penalty
        # Discrete columns score without the training prior ȳ in the intercept: pooled over folds,
        # that term is anti-correlated with each held-out fold's labels (a fold rich in positives
        # leaves a training set poor in them), which drags a signal-free attribute below AUROC 0.5.
        discrete = torch.tensor([t.attribute.discrete for t in members for _ in range(t.cols.numel())])
        prior = train.sum_y / train.count.clamp_min(1.0)[:, None]
        heads.bias = heads.bias - torch.where(discrete[None, :], prior, torch.zeros_like(prior))
        weight[:, :, cols], bias[:, cols], penalty[:, cols] = heads.weight, heads.bias, heads.penalty
        midpoint[:, cols] = _class_midpoints(train, heads)
        low[:, cols], high[:, cols] = _score_range(stats, heads.weight, heads.bias)
        centre[cols] = stats.sum_y.sum(0) / stats.count.sum().clamp_min(1.0)
    return ProbeHeads(
        weight, bias, penalty, midpoint, low, high, centre,
        cols={t.attribute.name: t.cols for t in targets}, reason=reason, n_labelled=n_labelled,
        present=present, warnings=warnings, n_rows=n_rows,
    )


def _empty_labels(attribute: Attribute) -> torch.Tensor:
    return torch.zeros(0, dtype=torch.int64 if attribute.discrete else torch.float32)


# --------------------------------------------------------------------------- report (shared by both passes)


@dataclass
class MetricEstimate:
    """A metric's point value and percentile 95% interval over bootstrap replicates.

    ``undefined``: replicates where the metric was NaN (e.g. a class drew no identity) out of
    ``replicates``. The interval is NaN when there are no replicates or half of them are NaN.
    """

    value: float
    low: float
    high: float
    undefined: int = 0
    replicates: int = 0


def _estimate(point: torch.Tensor | float, replicates: torch.Tensor | None) -> MetricEstimate:
    low = high = math.nan
    undefined = total = 0
    if replicates is not None and replicates.numel():
        total = int(replicates.numel())
        finite = replicates[~torch.isnan(replicates)].to(torch.float64)
        undefined = total - int(finite.numel())
        if finite.numel() and finite.numel() >= 0.5 * total:
            low, high = (float(v) for v in torch.quantile(finite, torch.tensor([0.025, 0.975], dtype=torch.float64)))
    return MetricEstimate(float(point), low, high, undefined, total)


def _leakage_entries(
    schema: AttributeSchema, heads: ProbeHeads, estimates: Mapping[str, Mapping[str, MetricEstimate]]
) -> tuple[list[AttributeLeakage], list[str]]:
    """Report entries and warnings of every attribute, from its metric estimates (absent if undefined)."""
    leakage: list[AttributeLeakage] = []
    warnings: list[str] = []
    for attribute in schema:
        name = attribute.name
        metric = "auroc" if attribute.discrete else "r2"
        n_labelled = heads.n_labelled[name]
        if heads.reason[name]:
            warnings.append(f"attribute {name!r}: {heads.reason[name]}")
            leakage.append(_undefined(attribute, metric, n_labelled, heads.reason[name]))
            continue
        if attribute.kind == "categorical":
            present = set(heads.present[name])
            absent = [c for c in range(attribute.num_classes) if c not in present]
            if absent:
                names = ", ".join(repr(_class_name(attribute, c)) for c in absent)
                warnings.append(
                    f"attribute {name!r}: class(es) {names} have no labelled samples; "
                    f"the macro AUROC averages the other {len(present)} classes"
                )
        own = estimates[name]
        for key, estimate in own.items():
            if estimate.replicates and estimate.undefined > 0.05 * estimate.replicates:
                warnings.append(
                    f"attribute {name!r}: {estimate.undefined} of {estimate.replicates} bootstrap "
                    f"replicates left {key} undefined (a class drew no identity)"
                )
        value, low, high = own[metric].value, own[metric].low, own[metric].high
        if math.isnan(value):
            reason = f"{metric} undefined on the held-out scores"
            warnings.append(f"attribute {name!r}: {reason}")
            leakage.append(_undefined(attribute, metric, n_labelled, reason))
            continue
        extra = {"balanced_accuracy": own["balanced_accuracy"].value} if attribute.discrete else {}
        leakage.append(
            AttributeLeakage(
                name=name,
                kind=attribute.kind,
                group=attribute.group,
                metric=metric,
                value=value,
                low=low,
                high=high,
                leakage=_leakage_of(metric, value),
                leakage_low=_leakage_of(metric, low),
                leakage_high=_leakage_of(metric, high),
                n=n_labelled,
                extra=extra,
            )
        )
    return leakage, warnings


def _probe_tensors(heads: ProbeHeads) -> dict[str, torch.Tensor]:
    """The heads fitted on all data (T, D) / (T,), NaN rows for undefined attributes, float32."""
    n_folds = heads.n_folds
    directions = heads.weight[n_folds].T.clone()
    full_bias = heads.bias[n_folds].clone()
    full_penalty = heads.penalty[n_folds].clone()
    for name, cols in heads.cols.items():
        if heads.reason[name]:
            directions[cols] = math.nan
            full_bias[cols] = math.nan
            full_penalty[cols] = math.nan
    return {
        "probe_directions": directions.to(torch.float32),
        "probe_bias": full_bias.to(torch.float32),
        "probe_penalty": full_penalty.to(torch.float32),
    }


#: Kinds of heads that score discrete attributes: ridge (every epoch) or exact logistic (final reports).
HEADS = ("ridge", "logistic")


def _use_logistic_heads(
    heads: ProbeHeads,
    x: torch.Tensor,
    folds: torch.Tensor,
    y: torch.Tensor,
    targets: list[_Target],
    shared: FoldStatistics,
    masked: Mapping[str, FoldStatistics],
    C: float,
) -> None:
    """Replace the heads of every defined discrete attribute by logistic ones (all training sets).

    All their 0/1 columns are fitted at once; the binary cut is recomputed as the midpoint of
    the two training-class mean scores under the new head (from the statistics, as for ridge).
    """
    from frx_plugin.leakage.logistic import fit_logistic_heads

    chosen = [t for t in targets if t.attribute.discrete and not heads.reason[t.attribute.name]]
    if not chosen:
        return
    cols = torch.cat([t.cols for t in chosen])
    labelled = torch.cat([t.labelled[:, None].expand(-1, t.cols.numel()) for t in chosen], 1)
    fitted = fit_logistic_heads(x, y.index_select(1, cols), labelled, folds, shared.columns(cols), C=C)
    heads.weight[:, :, cols] = fitted.weight
    # scored without the training prior's log-odds, as the ridge heads are without the prior
    heads.bias[:, cols] = fitted.bias - torch.logit(fitted.prior)
    heads.penalty[:, cols] = 1.0 / C
    shared_train = shared.training_sets()
    offset = 0
    for t in chosen:
        width = t.cols.numel()
        local = slice(offset, offset + width)
        offset += width
        name = t.attribute.name
        train = masked[name].training_sets() if name in masked else shared_train.columns(t.cols)
        own = Heads(heads.weight[:, :, t.cols], heads.bias[:, t.cols], heads.penalty[:, t.cols])
        heads.threshold[:, t.cols] = _class_midpoints(train, own)
        if not bool(fitted.converged[:, local].all()):
            heads.warnings.append(
                f"attribute {t.attribute.name!r}: the logistic head did not converge in {fitted.iterations} "
                f"iterations (preconditioned gradient {float(fitted.gradient[:, local].max()):.2g})"
            )


@torch.no_grad()
def analyze_embeddings(
    embeddings: torch.Tensor,
    identity: torch.Tensor,
    labels: Mapping[str, torch.Tensor],
    schema: AttributeSchema,
    *,
    n_folds: int = 5,
    n_bootstrap: int = 200,
    seed: int = 0,
    folds: torch.Tensor | None = None,
    head: str = "ridge",
    C: float = 1.0,
) -> Report:
    """Held-out leakage of every attribute of ``schema`` from ``embeddings`` (N, D).

    Heads for all attributes are ridge regressions fitted at once from per-fold sufficient
    statistics on identity-disjoint folds (:func:`identity_folds` with ``seed``, or the
    caller's ``folds``); metrics are pooled over the held-out folds, and intervals come
    from ``n_bootstrap`` Poisson replicates over identities
    (:func:`~frx_plugin.randomness.poisson_bootstrap_weights` with ``seed``; none: intervals
    are NaN). Missing labels (-1, NaN) are left out per attribute. An attribute whose metric is
    undefined (one class, constant values, no labels, a training part without two classes) is
    NaN with ``reason`` and a warning; bad input raises :class:`AnalysisError` (or
    :class:`~frx_plugin.attributes.SchemaError` for labels that do not fit the schema).
    :func:`frx_plugin.streaming.analyze_stream` is the constant-memory twin.

    ``report.tensors``: ``probe_directions`` (T, D) float32, the heads fitted on all data,
    one row per target column in schema order (binary 1, categorical one per class,
    continuous 1; NaN rows for undefined attributes); ``probe_bias`` (T,) so that
    ``score = z @ probe_directions.T + probe_bias``; ``probe_penalty`` (T,) the ridge λ.
    These are always the ridge heads.

    ``head="logistic"``: the held-out scores of binary and categorical attributes come from
    exact L2-penalised logistic heads instead (one-vs-rest per class, penalty ``1/C`` on the
    summed loss, scikit-learn's ``LogisticRegression(C=C)`` objective; see
    :mod:`frx_plugin.logistic`); continuous attributes keep their ridge heads. The report's
    ``head`` says which.
    """
    from frx_plugin.randomness import poisson_bootstrap_weights

    if head not in HEADS:
        raise AnalysisError(f"head must be one of {list(HEADS)}, got {head!r}")
    if not isinstance(C, (int, float)) or isinstance(C, bool) or not math.isfinite(C) or C <= 0:
        raise AnalysisError(f"C (the inverse logistic penalty) must be a positive number, got {C!r}")
    x = _check_embeddings(embeddings)
    n, d = x.shape
    _check_identity(identity, n)
    identity = identity.detach().cpu()
    if not isinstance(n_bootstrap, int) or n_bootstrap < 0:
        raise AnalysisError(f"n_bootstrap must be a non-negative integer, got {n_bootstrap!r}")
    identity_index, n_identities = _identity_index(identity)
    warnings: list[str] = []
    if folds is None:
        folds = identity_folds(identity, n_folds, seed)
    else:
        if n_identities < 2:
            raise AnalysisError(f"identity: only {n_identities} identity in {n} samples; at least 2 are needed")
        folds, n_folds, fold_warnings = _check_folds(folds, identity_index, n)
        warnings += fold_warnings
    schema.validate(labels, n)
    labels = {name: labels[name].detach().cpu() for name in schema.names}
    # rows grouped by fold (every metric is invariant to the order): per-fold work takes slices
    order = None if bool((folds[1:] >= folds[:-1]).all()) else torch.argsort(folds, stable=True)
    if order is not None:
        x, folds, identity = x.index_select(0, order), folds[order], identity[order]
        labels = {name: value[order] for name, value in labels.items()}
    rows_as_given = x  # the logistic solver's data passes run in this precision
    if x.numel() <= _CONVERT_ONCE_ENTRIES:
        x = x.to(torch.float64)  # once, for both the statistics and the scoring

    from frx_plugin.leakage.metrics import ProbeStatistics  # the metric builds on this module's functions

    y_all, targets = build_targets(labels, schema, n)
    masked_names = [t.attribute.name for t in targets if not bool(t.labelled.all())]
    # all rows are here, in this process: no cross-process reduction (sync_on_compute=False)
    statistics = ProbeStatistics(schema, d, n_folds, masked_names, sync_on_compute=False)
    statistics.update(x, folds, labels)
    shared, masked = statistics.compute()
    heads = fit_probe_heads(shared, masked, schema, [int(f) for f in torch.unique(folds).tolist()], fit_discrete=head == "ridge")
    if head == "logistic":
        _use_logistic_heads(heads, rows_as_given, folds, y_all, targets, shared, masked, float(C))
    warnings += heads.warnings

    # held-out scores: each sample scored by the head of the training set without its fold
    scores = score_rows(x, folds, heads.weight, heads.bias)
    threshold = heads.threshold[folds]  # (N, T)

    # metrics and the Poisson bootstrap over identities
    chunk = max(1, _BOOTSTRAP_CHUNK_ENTRIES // max(n, 1))
    replicates: list[dict[str, list[torch.Tensor]]] = [dict() for _ in targets]
    points: list[dict[str, torch.Tensor]] = []
    inputs = []
    for t in targets:
        t.reason = heads.reason[t.attribute.name]
        complete = bool(t.labelled.all())
        rows = torch.arange(n) if complete else t.labelled.nonzero().squeeze(1)
        s = scores.index_select(1, t.cols)
        s = s if complete else s[rows]
        if t.attribute.kind == "binary":
            cut = threshold[:, t.cols[0]]
            predicted = s[:, 0] > (cut if complete else cut[rows])
        else:
            predicted = None
        inputs.append((rows, s, predicted, labels[t.attribute.name][rows]))
    # point estimates; the AUROCs of all complete discrete columns come from one batched sort
    batched = [i for i, t in enumerate(targets) if not t.reason and t.attribute.discrete and bool(t.labelled.all())]
    column_auroc: dict[int, torch.Tensor] = {}
    if batched:
        cols = torch.cat([targets[i].cols for i in batched])
        areas = auroc_columns(scores.index_select(1, cols), y_all.index_select(1, cols) > 0.5)
        offset = 0
        for i in batched:
            width = targets[i].cols.numel()
            column_auroc[i] = areas[offset : offset + width]
            offset += width
    for i, t in enumerate(targets):
        if t.reason:
            points.append({})
            continue
        _, s, predicted, raw = inputs[i]
        if t.attribute.discrete and i not in column_auroc:
            positive = torch.nn.functional.one_hot(raw.long(), 2 if t.attribute.kind == "binary" else t.cols.numel()).bool()
            column_auroc[i] = auroc_columns(s, positive[:, 1:] if t.attribute.kind == "binary" else positive)
        points.append(_evaluate(t, s, predicted, raw, None, column_auroc.get(i)))
    for start in range(0, n_bootstrap, chunk):
        w = poisson_bootstrap_weights(identity, seed, min(chunk, n_bootstrap - start), first_replicate=start)
        for i, t in enumerate(targets):
            if t.reason:
                continue
            rows, s, predicted, raw = inputs[i]
            w_rows = w if rows.numel() == n else w.index_select(1, rows)
            for key, value in _evaluate(t, s, predicted, raw, w_rows).items():
                replicates[i].setdefault(key, []).append(value)

    estimates = {
        t.attribute.name: {
            key: _estimate(value[0] if value.ndim else value, torch.cat(replicates[i][key]) if replicates[i].get(key) else None)
            for key, value in points[i].items()
        }
        for i, t in enumerate(targets)
        if not t.reason
    }
    leakage, more = _leakage_entries(schema, heads, estimates)
    return Report(
        leakage=leakage,
        n_samples=n,
        n_identities=n_identities,
        n_folds=n_folds,
        tensors=_probe_tensors(heads),
        warnings=warnings + more,
        head=head,
    )
