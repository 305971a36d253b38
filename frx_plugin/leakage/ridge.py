"""Ridge heads of the leakage analysis: closed-form, for every target column at once, from sufficient statistics.

Each target column gets its own ridge head ``score = zᵀw + b`` fitted on centred training
embeddings (the intercept ``b`` comes from the training means).

Penalty (per training set and target column): chosen on held-out *identities* by an inner
cross-validation over the other folds, computed from the per-fold sufficient statistics alone
(:mod:`frx_plugin.leakage.penalty`). A continuous column's λ has the least held-out squared error.
A 0/1 column (binary, or one class of a categorical attribute) is the logistic head's first Newton
step from the prior-only model: ridge with λ = 1/(C·p(1 − p)), p the training part's share of ones,
its weights divided by p(1 − p), with C = 1 (scikit-learn's ``LogisticRegression()``) unless C = 1
hides the attribute on every inner fold (then the C of the grid that reads it; see
:func:`~frx_plugin.leakage.penalty.logistic_penalty`). With fewer than 3 non-empty folds it falls back to generalised
cross-validation over a log grid of 33 penalties λ = s·10^k, k ∈ [−6, 2], s = trace(S)/D the
mean eigenvalue of the centred training scatter S = XᵀX − n x̄x̄ᵀ. With S = V diag(e) Vᵀ and
c = Vᵀ Xᵀy (centred),

    RSS(λ) = yᵀy − Σ_d c_d² (e_d + 2λ) / (e_d + λ)²,      df(λ) = 1 + Σ_d e_d / (e_d + λ)

and GCV(λ) = n·RSS(λ) / (n − df(λ))². GCV approximates leave-one-*image*-out error, which on
clustered identities rewards memorising identities; that is why the inner identity-disjoint
choice comes first. Discrete columns are scored without the training prior in the intercept
(pooled over folds that term is anti-correlated with the held-out labels), with the logistic
intercept's second-order shift (:func:`~frx_plugin.leakage.penalty.intercept_shift`). A binary column's
threshold is the midpoint of the two training-class mean scores (the equal-prior LDA cut).

:func:`fit_probe_heads` turns pass-1 statistics into :class:`ProbeHeads` (heads, thresholds,
score ranges, per-attribute reasons) for both the in-memory and the streaming scoring pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from frx_plugin.attributes import AttributeSchema
from frx_plugin.errors import AnalysisError
from frx_plugin.leakage.penalty import (
    INNER_EXPONENTS,
    centred_statistics,
    fisher_weight,
    inner_fold_penalty,
    intercept_shift,
    logistic_penalty,
    training_prior,
)
from frx_plugin.leakage.statistics import FoldStatistics, Target, target_layout, undefined_reason, unseen_class_warnings

__all__ = ["Heads", "fit_ridge_heads", "class_midpoints", "ProbeHeads", "fit_probe_heads", "PENALTY_EXPONENTS", "INNER_EXPONENTS"]

#: GCV grid: λ = mean eigenvalue × 10^k for these exponents k.
PENALTY_EXPONENTS = torch.linspace(-6.0, 2.0, 33, dtype=torch.float64, device="cpu")


# --------------------------------------------------------------------------- ridge heads


@dataclass
class Heads:
    """Linear heads ``score = x @ weight[s] + bias[s]`` for S training sets and T columns."""

    weight: torch.Tensor  # (S, D, T)
    bias: torch.Tensor  # (S, T)
    penalty: torch.Tensor  # (S, T) the λ chosen by GCV


#: Per training set, up to this many distinct penalties are solved by Cholesky factorisations
#: (one each); more share one eigendecomposition.
_MAX_CHOLESKY_PENALTIES = 6


def _solve_ridge(scatter: torch.Tensor, cross: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """W (S, D, T) with (scatter[s] + penalty[s, t]·I) W[s, :, t] = cross[s, :, t]."""
    weight = torch.empty_like(cross)
    eye = torch.eye(scatter.shape[1], dtype=scatter.dtype, device=scatter.device)
    for s in range(scatter.shape[0]):
        values, which = torch.unique(penalty[s], return_inverse=True)
        if values.numel() <= _MAX_CHOLESKY_PENALTIES:
            factors = [torch.linalg.cholesky_ex(scatter[s] + lam * eye) for lam in values.tolist()]
            if not bool(torch.stack([info for _, info in factors]).any()):  # every factorisation succeeded
                for j, (factor, _) in enumerate(factors):
                    cols = (which == j).nonzero().squeeze(1)
                    weight[s][:, cols] = torch.cholesky_solve(cross[s][:, cols], factor)
                continue
        eigval, eigvec = torch.linalg.eigh(scatter[s])
        eigval = eigval.clamp_min(0.0)
        weight[s] = eigvec @ ((eigvec.T @ cross[s]) / (eigval[:, None] + penalty[s][None, :]))
    return weight


def fit_ridge_heads(stats: FoldStatistics, exponents: torch.Tensor = PENALTY_EXPONENTS, penalty: torch.Tensor | None = None) -> Heads:
    """Ridge heads for every training set (slice) of ``stats`` and every column.

    ``penalty`` (S, T) gives λ (see :mod:`frx_plugin.leakage.penalty`); without it, λ is chosen
    by GCV (see the module docstring). ``stats`` holds training-set statistics (e.g.
    :meth:`FoldStatistics.training_sets`), not per-fold ones.
    """
    n, mean_x, mean_y, scatter, cross, yy = centred_statistics(stats)
    if penalty is not None:
        weight = _solve_ridge(scatter, cross, penalty)
        bias = mean_y - torch.einsum("sd,sdt->st", mean_x, weight)
        return Heads(weight, bias, penalty)
    eigval, eigvec = torch.linalg.eigh(scatter)
    eigval = eigval.clamp_min(0.0)  # (S, D)
    proj = eigvec.transpose(1, 2) @ cross  # (S, D, T)
    d = eigval.shape[1]
    scale = (eigval.sum(1) / d).clamp_min(torch.finfo(torch.float64).tiny)  # (S,)
    grid = scale[:, None] * (10.0 ** exponents.to(scale.device, torch.float64))[None, :]  # (S, L)
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


def class_midpoints(stats: FoldStatistics, heads: Heads) -> torch.Tensor:
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


# --------------------------------------------------------------------------- probe heads (shared by both passes)

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
    defined), ``n_labelled``, ``present`` the classes with labelled samples (discrete kinds),
    ``class_counts`` the labelled samples of each class (discrete kinds).
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
    class_counts: dict[str, list[int]] = field(default_factory=dict)

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
    discrete_penalty: str = "logistic",
) -> ProbeHeads:
    """Ridge heads of every attribute from ``ProbeStatistics.compute()`` = (``shared``, ``masked``).

    ``fit_discrete=False`` leaves the heads of binary and categorical columns at zero (their
    reasons, counts and warnings are still computed): for callers that fit those heads
    another way (the logistic heads of :func:`~frx_plugin.leakage.estimate.analyze_embeddings`).
    ``discrete_penalty``: how 0/1 columns choose their penalty: "logistic" (the default, agreeing with the
    logistic reference) or "squared_error" (the inner-fold search of continuous columns; near-discriminant
    heads, which the counterfactual moves need: :func:`frx_plugin.counterfactual.latent.counterfactual_heads`).

    Attributes named in ``masked`` (those with missing labels) get heads from their labelled rows
    only, one group each; the others share one group (one XᵀX). ``folds``: the fold ids that hold
    data (default: those with a positive count). Undefined attributes (no labels, one class, a
    constant value, a training part without two classes) are decided from the statistics alone
    and get a ``reason``; their heads are computed but meaningless.
    """
    if discrete_penalty not in ("logistic", "squared_error"):
        raise AnalysisError(f"discrete_penalty must be 'logistic' or 'squared_error', got {discrete_penalty!r}")
    n_folds = shared.count.shape[0]
    fold_has = [int(f) for f in folds] if folds is not None else [f for f, count in enumerate(shared.count.tolist()) if count > 0]
    targets = target_layout(schema)
    out = _empty_probe_heads(targets, n_folds, shared.sum_x.shape[1], int(round(float(shared.count.sum()))), shared.count.device)
    for members, stats in _statistics_groups(targets, shared, masked):
        train = stats.training_sets()
        cols = torch.cat([t.cols for t in members])
        _describe_group(out, members, stats, train, fold_has)
        heads = _group_ridge_heads(members, stats, train, fit_discrete, discrete_penalty)
        out.weight[:, :, cols], out.bias[:, cols], out.penalty[:, cols] = heads.weight, heads.bias, heads.penalty
        out.threshold[:, cols] = class_midpoints(train, heads)
        out.score_low[:, cols], out.score_high[:, cols] = _score_range(stats, heads.weight, heads.bias)
        out.label_centre[cols] = stats.sum_y.sum(0) / stats.count.sum().clamp_min(1.0)
    return out


def _empty_probe_heads(targets: list[Target], n_folds: int, dim: int, n_rows: int, device: torch.device) -> ProbeHeads:
    """Zero heads, NaN thresholds and empty per-attribute entries on ``device``, for ``fit_probe_heads`` to fill."""
    n_columns = sum(t.cols.numel() for t in targets)
    f64 = torch.float64
    return ProbeHeads(
        weight=torch.zeros(n_folds + 1, dim, n_columns, dtype=f64, device=device),
        bias=torch.zeros(n_folds + 1, n_columns, dtype=f64, device=device),
        penalty=torch.zeros(n_folds + 1, n_columns, dtype=f64, device=device),
        threshold=torch.full((n_folds + 1, n_columns), math.nan, dtype=f64, device=device),
        score_low=torch.zeros(n_folds, n_columns, dtype=f64, device=device),
        score_high=torch.zeros(n_folds, n_columns, dtype=f64, device=device),
        label_centre=torch.zeros(n_columns, dtype=f64, device=device),
        cols={t.attribute.name: t.cols for t in targets},
        reason={},
        n_labelled={},
        present={},
        warnings=[],
        n_rows=n_rows,
    )


def _statistics_groups(
    targets: list[Target], shared: FoldStatistics, masked: Mapping[str, FoldStatistics]
) -> list[tuple[list[Target], FoldStatistics]]:
    """Attributes without missing labels share one group (one XᵀX); each attribute in ``masked`` is its own."""
    complete = [t for t in targets if t.attribute.name not in masked]
    groups: list[tuple[list[Target], FoldStatistics]] = []
    if complete:
        groups.append((complete, shared.columns(torch.cat([t.cols for t in complete]))))
    for t in targets:
        if t.attribute.name in masked:
            groups.append(([t], masked[t.attribute.name]))
    return groups


def _describe_group(out: ProbeHeads, members: list[Target], stats: FoldStatistics, train: FoldStatistics, fold_has: list[int]) -> None:
    """Per member attribute: why it is undefined, its labelled count, its classes present, unseen-class warnings."""
    counts = stats.count.tolist()
    held_out_folds = [f for f in fold_has if counts[f] > 0.5]
    offset = 0
    for t in members:
        attribute, width = t.attribute, t.cols.numel()
        local = torch.arange(offset, offset + width, device="cpu")  # column indices (a layout)
        offset += width
        name = attribute.name
        per_fold = stats.columns(local)
        out.reason[name] = undefined_reason(attribute, per_fold, train.columns(local), held_out_folds, out.n_rows)
        out.n_labelled[name] = int(round(float(stats.count.sum())))
        if attribute.discrete:
            totals = per_fold.sum_y.sum(0)
            counts = [out.n_labelled[name] - float(totals[0]), float(totals[0])] if attribute.kind == "binary" else totals.tolist()
            out.present[name] = [c for c, k in enumerate(counts) if k > 0.5]
            out.class_counts[name] = [int(round(k)) for k in counts]
        if out.reason[name] is None and attribute.kind == "categorical":
            out.warnings += unseen_class_warnings(attribute, train.sum_y[:, local], held_out_folds)


def _group_ridge_heads(members: list[Target], stats: FoldStatistics, train: FoldStatistics, fit_discrete: bool,
                       discrete_penalty: str = "logistic") -> Heads:
    """Ridge heads of one group's columns on every training set (discrete ones zero unless ``fit_discrete``)."""
    f64, device = torch.float64, stats.count.device
    d = stats.sum_x.shape[1]
    fit = torch.tensor([fit_discrete or not t.attribute.discrete for t in members for _ in range(t.cols.numel())], device="cpu")
    discrete = torch.tensor([t.attribute.discrete for t in members for _ in range(t.cols.numel())], device=device)
    sets = train.gram.shape[0]
    heads = Heads(torch.zeros(sets, d, fit.numel(), dtype=f64, device=device),
                  *(torch.zeros(sets, fit.numel(), dtype=f64, device=device) for _ in range(2)))
    if bool(fit.any()):
        some = fit.nonzero().squeeze(1)
        on = some.to(device)
        partial = fit_ridge_heads(train.columns(some), penalty=_penalties(stats.columns(some), train.columns(some), discrete[on],
                                                                          discrete_penalty))
        heads.weight[:, :, on], heads.bias[:, on], heads.penalty[:, on] = partial.weight, partial.bias, partial.penalty
    # Discrete columns score without the training prior ȳ in the intercept: pooled over folds,
    # that term is anti-correlated with each held-out fold's labels (a fold rich in positives
    # leaves a training set poor in them), which drags a signal-free attribute below AUROC 0.5.
    prior = train.sum_y / train.count.clamp_min(1.0)[:, None]
    heads.bias = heads.bias - torch.where(discrete[None, :], prior, torch.zeros_like(prior))
    if discrete_penalty != "logistic":  # the squared-error heads stay on their own scale (the counterfactual moves' heads)
        return heads
    # ... and on the logistic head's scale (divided by the Fisher weight p(1 − p), as its Newton step
    # is), so the scores pooled over folds weigh each fold's head as the logistic heads would.
    scale = torch.where(discrete[None, :], 1.0 / fisher_weight(train.count, train.sum_y), torch.ones_like(prior))
    heads.weight, heads.bias = heads.weight * scale[:, None, :], heads.bias * scale
    # ... with the logistic head's own intercept beyond the prior's log-odds (second order)
    variance = torch.einsum("sdt,sde,set->st", heads.weight, centred_statistics(train)[3], heads.weight)
    shift = intercept_shift(training_prior(train.count, train.sum_y), variance / train.count.clamp_min(1.0)[:, None])
    heads.bias = heads.bias + torch.where(discrete[None, :], shift, torch.zeros_like(shift))
    return heads


def _penalties(stats: FoldStatistics, train: FoldStatistics, discrete: torch.Tensor,
               discrete_penalty: str = "logistic") -> torch.Tensor | None:
    """(S, T) ridge λ of every training set and column: on the logistic scale for 0/1 columns
    (:func:`~frx_plugin.leakage.penalty.logistic_penalty`; ``discrete_penalty="squared_error"``: as continuous
    ones), by squared error for continuous ones (:func:`~frx_plugin.leakage.penalty.inner_fold_penalty`);
    ``None`` (GCV) when fewer than 3 folds hold data."""
    penalty = torch.zeros_like(train.sum_y)
    for is_discrete in (True, False):
        cols = (discrete == is_discrete).nonzero().squeeze(1)
        if not cols.numel():
            continue
        logistic = is_discrete and discrete_penalty == "logistic"
        chosen = logistic_penalty(stats.columns(cols), train.columns(cols)) if logistic else inner_fold_penalty(stats.columns(cols))
        if chosen is None:
            return None
        penalty[:, cols] = chosen
    return penalty
