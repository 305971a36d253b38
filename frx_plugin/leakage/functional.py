"""Tensor-in, tensor-out metric functions of the leakage analysis (in the manner of ``torchmetrics.functional``).

``auroc`` / ``auroc_columns`` / ``balanced_accuracy`` / ``r2_score``
    exact metrics; the weighted ones take a (B, N) matrix of bootstrap weights at once
``histogram_auroc`` / ``histogram_auroc_tie_bound``
    AUROC from weighted score histograms, and the largest error of that binning
``normalised_leakage``
    the leakage ℓ of a metric value: ℓ = max(0, 2·AUROC − 1) for discrete attributes (0 at
    chance, 1 for perfect separation), ℓ = max(0, R²) for continuous ones
``MetricEstimate`` / ``bootstrap_estimate``
    a point value with the percentile 95% interval of its bootstrap replicates
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "auroc",
    "auroc_columns",
    "balanced_accuracy",
    "r2_score",
    "histogram_auroc",
    "histogram_auroc_tie_bound",
    "normalised_leakage",
    "MetricEstimate",
    "bootstrap_estimate",
]


def _on(value: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``value`` as a tensor on ``device`` (in ``dtype`` when given)."""
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=dtype)
    return torch.as_tensor(value, dtype=dtype, device=device)


def _device_of(value: torch.Tensor) -> torch.device:
    """The device of a tensor, the CPU for anything else (a list, an array)."""
    return value.device if isinstance(value, torch.Tensor) else torch.device("cpu")


def _as_weight_matrix(weights: torch.Tensor | None, n: int, device: torch.device) -> tuple[torch.Tensor, bool]:
    """(B, N) floating weights on ``device`` (float64 unless given as float32) and whether the input was one row."""
    if weights is None:
        return torch.ones(1, n, dtype=torch.float64, device=device), True
    weights = _on(weights, device)
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
    float64. Computed on the device of ``scores``. Returns a 0-d tensor (or (B,)); NaN where one
    class has zero weight.
    """
    scores = _on(scores, _device_of(scores), torch.float64)
    positive = _on(positive, scores.device).bool()
    w, single = _as_weight_matrix(weights, scores.numel(), scores.device)
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
    float64 on the device of ``scores``; NaN where a column has one class only.
    """
    device = _device_of(scores)
    values, order = torch.sort(_on(scores, device).T.contiguous(), dim=1)
    pos = _on(positive, device).bool().T.gather(1, order)
    c, n = values.shape
    index = torch.arange(n, device=device).expand(c, n)
    starts = torch.ones(c, n, dtype=torch.bool, device=device)
    starts[:, 1:] = values[:, 1:] != values[:, :-1]
    ends = torch.ones(c, n, dtype=torch.bool, device=device)
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


def balanced_accuracy(predicted: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None,
                      num_classes: int | None = None) -> torch.Tensor:
    """(Weighted) mean per-class recall over the classes of ``target`` that carry weight.

    ``predicted``, ``target`` (N,) int class indices; ``weights`` None, (N,) or (B, N).
    Matches scikit-learn's ``balanced_accuracy_score(target, predicted, sample_weight=w)``.
    Computed on the device of ``target``.
    """
    device = _device_of(target)
    predicted = _on(predicted, device).long()
    target = _on(target, device).long()
    w, single = _as_weight_matrix(weights, target.numel(), device)
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
    ``r2_score(target, predicted, sample_weight=w)`` where SST > 0. Computed on the device of ``target``.
    """
    device = _device_of(target)
    predicted = _on(predicted, device, torch.float64)
    target = _on(target, device, torch.float64)
    w, single = _as_weight_matrix(weights, target.numel(), device)
    w = w.to(torch.float64)
    center = target.mean()  # numerically kinder sums; SST is shift-invariant
    t = target - center
    total = w.sum(1)
    sum_t = w @ t
    sst = w @ (t * t) - sum_t**2 / total.clamp_min(1e-300)
    sse = w @ ((target - predicted) ** 2)
    out = torch.where(sst > 1e-12 * (w @ (t * t)).clamp_min(1e-300), 1.0 - sse / sst.clamp_min(1e-300), torch.full_like(sst, math.nan))
    return out[0] if single else out


def normalised_leakage(metric: str, value: float) -> float:
    """Leakage ℓ of a metric value: max(0, 2·AUROC − 1) for ``metric="auroc"``, else max(0, R²); NaN stays NaN."""
    if math.isnan(value):
        return math.nan
    return max(0.0, 2.0 * value - 1.0) if metric == "auroc" else max(0.0, value)


def histogram_auroc(negative: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """AUROC from weighted score histograms (..., K) of the two classes; same-bin pairs count ½.

    NaN where a class has no weight.
    """
    below = torch.cumsum(negative, -1) - negative
    numerator = (positive * (below + 0.5 * negative)).sum(-1)
    denominator = positive.sum(-1) * negative.sum(-1)
    return torch.where(denominator > 0, numerator / denominator.clamp_min(1e-300), torch.full_like(numerator, math.nan))


def histogram_auroc_tie_bound(negative: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Largest possible |binned − exact AUROC|: ½ the share of (positive, negative) pairs in one bin."""
    return 0.5 * (positive * negative).sum(-1) / (positive.sum(-1) * negative.sum(-1)).clamp_min(1e-300)


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


def bootstrap_estimate(point: torch.Tensor | float, replicates: torch.Tensor | None) -> MetricEstimate:
    """``point`` with the percentile 95% interval (2.5% and 97.5% quantiles) of the finite ``replicates``.

    NaN replicates count as ``undefined``; the interval is NaN without replicates or when fewer
    than half of them are finite.
    """
    low = high = math.nan
    undefined = total = 0
    if replicates is not None and replicates.numel():
        total = int(replicates.numel())
        finite = replicates[~torch.isnan(replicates)].to(torch.float64)
        undefined = total - int(finite.numel())
        if finite.numel() and finite.numel() >= 0.5 * total:
            quantiles = torch.tensor([0.025, 0.975], dtype=torch.float64, device=finite.device)
            low, high = torch.quantile(finite, quantiles).tolist()
    return MetricEstimate(float(point), low, high, undefined, total)
