"""How the ridge heads' penalties are chosen on held-out identities, from per-fold sufficient statistics alone.

Both choices are nested in the outer identity-disjoint folds: the head that scores outer fold f gets a
penalty chosen without any of fold f's data.

- Continuous columns (:func:`inner_fold_penalty`): λ relative to the training scatter's mean eigenvalue,
  the exponent with the least held-out squared error.
- 0/1 columns (binary, and each class of a categorical attribute; :func:`logistic_penalty`): on the
  logistic head's scale, λ = 1/(C·p(1 − p)) with p the training part's share of ones, so that the
  ridge head divided by p(1 − p) is the first penalised Newton step of the logistic head with inverse
  penalty C from the prior-only model. C = 1 (scikit-learn's ``LogisticRegression()``) unless C = 1
  hides the attribute on every inner fold and a larger C reads it; see :func:`logistic_penalty`.
"""

from __future__ import annotations

import itertools

import torch

from frx_plugin.leakage.statistics import FoldStatistics

__all__ = ["INNER_EXPONENTS", "LOGISTIC_C", "C_GAIN", "C_TOLERANCE", "centred_statistics", "inner_fold_penalty", "logistic_penalty",
           "training_prior", "fisher_weight", "intercept_shift", "inner_pairs", "inner_evaluations", "held_out_leakage"]

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


# --------------------------------------------------------------------------- 0/1 columns: C on the logistic scale

#: C grid of 0/1 columns, λ = 1/(C·p(1 − p)): from scikit-learn's default C = 1 up to 10⁸, a decade apart.
LOGISTIC_C = 10.0 ** torch.arange(0.0, 8.5, 1.0, dtype=torch.float64, device="cpu")
#: C departs from 1 only where a larger C reads at least this much more leakage on every inner fold (``logistic_penalty``).
C_GAIN = 0.4
#: Then C is the smallest one whose held-out leakage is within this of the grid's best.
C_TOLERANCE = 0.01
#: With up to this many folds holding data, every pair of them is an inner training set (else the cyclic neighbours).
ALL_PAIRS_FOLDS = 6


def training_prior(count: torch.Tensor, sum_y: torch.Tensor) -> torch.Tensor:
    """(S, T) share of ones p = sum_y / count of 0/1 columns, kept half a sample inside (0, 1)."""
    n = count.clamp_min(1.0)[:, None]
    return torch.minimum(torch.maximum(sum_y / n, 0.5 / n), 1.0 - 0.5 / n)


def fisher_weight(count: torch.Tensor, sum_y: torch.Tensor) -> torch.Tensor:
    """(S, T) p(1 − p) of 0/1 columns (:func:`training_prior`): the logistic head's curvature at the prior-only model."""
    p = training_prior(count, sum_y)
    return p * (1.0 - p)


def intercept_shift(prior: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """The logistic head's intercept beyond the training prior's log-odds, to second order: −½(1 − 2p)·v.

    With centred training scores s = (x − x̄)ᵀw of variance v, the intercept δ that keeps the mean
    fitted probability at the prior p solves Σσ(logit p + s + δ) = n·p; expanding σ to second order
    around logit p gives δ = −½(1 − 2p)·v. The converged logistic head (the reference's) carries this
    shift, which differs from fold to fold; pooled held-out AUROC feels it for rare attributes.
    """
    return -0.5 * (1.0 - 2.0 * prior) * variance


def inner_pairs(present: list[int]) -> list[tuple[int, int]]:
    """Inner training sets "all but folds a and b": every pair of ``present`` folds, or the cyclic neighbours of many."""
    if len(present) <= ALL_PAIRS_FOLDS:
        return list(itertools.combinations(present, 2))
    return [(present[i], present[(i + 1) % len(present)]) for i in range(len(present))]


def _score_moments(stats: FoldStatistics, g: int, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(3, L, T) sums over fold g of the scores ``x @ weight + bias`` of class 1, of all rows, and of their squares.

    ``weight`` (D, L, T), ``bias`` (L, T). From fold g's centred statistics: with μ = x̄ᵀw + b the
    mean score, Σ_{y=1} s = wᵀS_xy + n₁μ, Σ s = nμ, Σ s² = wᵀS_xx w + nμ².
    """
    n = stats.count[g].clamp_min(1.0)
    mean_x, mean_y = stats.sum_x[g] / n, stats.sum_y[g] / n
    scatter = stats.gram[g] - n * torch.outer(mean_x, mean_x)
    cross = stats.cross[g] - n * torch.outer(mean_x, mean_y)  # (D, T)
    dim, n_steps, n_columns = weight.shape
    flat = weight.reshape(dim, -1)
    mean = (mean_x @ flat).reshape(n_steps, n_columns) + bias
    quad = ((scatter @ flat) * flat).sum(0).reshape(n_steps, n_columns)
    positive = (cross[:, None, :] * weight).sum(0) + stats.sum_y[g] * mean
    return torch.stack([positive, stats.count[g] * mean, quad + stats.count[g] * mean**2])


def _logistic_path(train: FoldStatistics, c_grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Heads (D, L, T) and biases (L, T) of one training set for every C: ridge at λ = 1/(C·p(1 − p)), divided by p(1 − p).

    Scored as the default heads are (:func:`~frx_plugin.leakage.ridge.fit_probe_heads`): without the
    training prior's log-odds, with the logistic intercept's shift (:func:`intercept_shift`), on the
    logistic head's scale, so that the scores of heads from different training sets can be pooled.
    """
    _, mean_x, _, scatter, cross, _ = centred_statistics(train)
    eigval, eigvec = torch.linalg.eigh(scatter[0])
    eigval = eigval.clamp_min(0.0)
    weight_p = fisher_weight(train.count, train.sum_y)[0]  # (T,)
    lam = 1.0 / (c_grid.to(eigval.device)[:, None] * weight_p[None, :])  # (L, T)
    proj = eigvec.T @ cross[0]  # (D, T)
    shrunk = proj[:, None, :] / (eigval[:, None, None] + lam[None, :, :])  # (D, L, T)
    dim, n_steps, n_columns = shrunk.shape
    flat = (eigvec @ shrunk.reshape(dim, -1)) / weight_p.repeat(n_steps)
    variance = ((scatter[0] @ flat) * flat).sum(0).reshape(n_steps, n_columns) / train.count.clamp_min(1.0)
    bias = -(mean_x[0] @ flat).reshape(n_steps, n_columns) + intercept_shift(training_prior(train.count, train.sum_y), variance)
    return flat.reshape(dim, n_steps, n_columns), bias


def inner_evaluations(fold_stats: FoldStatistics, c_grid: torch.Tensor = LOGISTIC_C
                      ) -> tuple[list[int], torch.Tensor, torch.Tensor] | None:
    """Every inner evaluation of the 0/1 columns' heads for every C: ``(outer, moments, counts)`` or ``None`` below 3 folds.

    For outer fold f, the inner heads are fitted on "all but f and g" and score fold g, for every fold
    g that :func:`inner_pairs` pairs with f. Evaluation e is one (pair, held-out fold): ``outer[e]``
    the outer fold it counts for, ``moments[e]`` (3, L, T) its score sums (:func:`_score_moments`),
    ``counts[e]`` (2, T) its ones and rows.
    """
    present = [f for f, count in enumerate(fold_stats.count.tolist()) if count > 0]
    if len(present) < 3:
        return None
    per_fold = fold_stats.tensors()
    total = [t.sum(0) for t in per_fold]
    n_columns = fold_stats.sum_y.shape[1]
    outer, moments, counts = [], [], []
    for a, b in inner_pairs(present):
        train = FoldStatistics(*((tot - p[a] - p[b])[None] for tot, p in zip(total, per_fold)))
        weight, bias = _logistic_path(train, c_grid)
        for held, other in ((b, a), (a, b)):
            outer.append(other)
            moments.append(_score_moments(fold_stats, held, weight, bias))
            counts.append(torch.stack([fold_stats.sum_y[held], fold_stats.count[held].expand(n_columns)]))
    return outer, torch.stack(moments), torch.stack(counts)


def held_out_leakage(moments: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """(…, L, T) leakage ℓ = erf(d'/2) = 2·Φ(d'/√2) − 1 of the binormal model, from score sums (…, 3, L, T) and counts (…, 2, T).

    d' = (m₁ − m₀)/s: the distance of the class means over the within-class standard deviation of
    the scores, pooled over whatever the sums pooled; 0 where a class has no rows.
    """
    ones, rows = counts[..., 0, None, :], counts[..., 1, None, :]
    zeros = rows - ones
    mean1 = moments[..., 0, :, :] / ones.clamp_min(1.0)
    mean0 = (moments[..., 1, :, :] - moments[..., 0, :, :]) / zeros.clamp_min(1.0)
    within = (moments[..., 2, :, :] - ones * mean1**2 - zeros * mean0**2) / rows.clamp_min(1.0)
    separation = (mean1 - mean0) / within.clamp_min(torch.finfo(torch.float64).tiny).sqrt()
    separation = torch.where((ones > 0.5) & (zeros > 0.5), separation, torch.zeros_like(separation))
    return torch.special.erf(torch.nan_to_num(separation, nan=0.0) / 2.0).clamp_min(0.0)


def logistic_penalty(fold_stats: FoldStatistics, train: FoldStatistics, c_grid: torch.Tensor = LOGISTIC_C,
                     gain: float = C_GAIN) -> torch.Tensor | None:
    """(F + 1, T) ridge λ = 1/(C·p(1 − p)) of every training set and 0/1 column, C chosen on held-out identities.

    C = 1, the usual logistic reference's penalty, unless C = 1 hides the attribute: per outer fold,
    C* is the smallest C of the grid whose held-out leakage, pooled over its inner folds
    (:func:`held_out_leakage`), is within ``C_TOLERANCE`` of the best, and C* replaces 1 only if it
    reads at least ``gain`` more leakage than C = 1 on *every* inner fold alone. The slice of the
    head on all data decides on every inner evaluation.

    Why this leans so far to C = 1: where C = 1 reads an attribute, a larger C often reads it somewhat
    better (less shrinkage), but on a few identities that gain is mostly noise, and taking it made the
    squared-error search jump from one end of its grid to the other from fold to fold (a rare
    attribute's heads then disagree with each other and with the reference). An embedding that keeps
    an attribute only in directions of tiny variance (the ``frx demo`` backbone: glasses and
    background at about 10⁻⁴ of the identity directions' variance) is the other case: C = 1 shrinks
    it to chance on every fold while a large C reads it, and only that meets the bar. An inner fold
    without both classes reads nothing at any C, so it keeps C = 1. ``train``: the F + 1 training sets
    (:meth:`FoldStatistics.training_sets`), whose priors p set λ. ``None`` when fewer than 3 folds
    hold data.
    """
    found = inner_evaluations(fold_stats, c_grid)
    if found is None:
        return None
    outer, moments, counts = found
    n_folds = fold_stats.count.shape[0]
    slots = torch.tensor(outer, device=moments.device)
    per_eval = held_out_leakage(moments, counts)  # (E, L, T)
    n_steps = len(c_grid)
    steps = torch.arange(n_steps, device=moments.device)[:, None]
    chosen = torch.zeros(n_folds + 1, moments.shape[-1], dtype=torch.long, device=moments.device)
    for f in range(n_folds + 1):
        mine = slots == f if f < n_folds else torch.ones_like(slots, dtype=torch.bool)
        if not bool(mine.any()):
            continue
        pooled = held_out_leakage(moments[mine].sum(0), counts[mine].sum(0))  # (L, T)
        best = torch.where(pooled >= pooled.max(0).values - C_TOLERANCE, steps, n_steps).min(0).values  # (T,)
        beats = per_eval[mine].gather(1, best.expand(int(mine.sum()), 1, -1))[:, 0, :] - per_eval[mine][:, 0, :]
        chosen[f] = torch.where(beats.min(0).values >= gain, best, torch.zeros_like(best))
    for f in range(n_folds):
        if not bool((slots == f).any()):
            chosen[f] = chosen[n_folds]
    return 1.0 / (c_grid.to(chosen.device)[chosen] * fisher_weight(train.count, train.sum_y))
