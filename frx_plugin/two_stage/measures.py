"""The measures of the two-stage path: recovery significance R_k, spread, and the pairs they use."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from frx_plugin.attributes import Attribute, AttributeSchema

#: an attribute whose R_k on real faces is at most this is called unreadable by the estimator
READABLE_MIN = 0.1


def within_fold_pairs(identity: torch.Tensor, folds: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """π (N,): for each face, a face of another identity in the same fold (seeded).

    Within each fold the identities are shuffled and each is paired with the next one
    (cyclically); each face then takes a random face of its paired identity. A fold with a
    single identity has no partner: its faces get -1.
    """
    generator = torch.Generator().manual_seed(int(seed) + 7919)
    pairs = torch.full_like(identity, -1, dtype=torch.int64)
    for f in torch.unique(folds).tolist():
        rows = (folds == f).nonzero().squeeze(1)
        ids, index = torch.unique(identity[rows], return_inverse=True)
        if ids.numel() < 2:
            continue
        order = torch.randperm(ids.numel(), generator=generator)
        partner = torch.empty_like(order)
        partner[order] = order.roll(-1)  # identity order[j] → order[j + 1]
        # faces of each identity, grouped: pick a random one of the partner's
        counts = torch.bincount(index, minlength=ids.numel())
        starts = torch.cumsum(counts, 0) - counts
        by_identity = rows[torch.argsort(index, stable=True)]
        target = partner[index]
        pick = (torch.rand(rows.numel(), generator=generator) * counts[target]).long().clamp_max(counts[target] - 1)
        pairs[rows] = by_identity[starts[target] + pick]
    return pairs


def reading_errors(attribute: Attribute, target: torch.Tensor, readings: torch.Tensor) -> torch.Tensor:
    """Per face (n,): the error of its readings ``(n, S)`` (or ``(n,)``), averaged over the S samples.

    Discrete kinds: the share of readings that are not the label; continuous: the mean absolute
    error. NaN where a reading is missing.
    """
    readings = readings.to(torch.float64)
    if readings.ndim == 1:
        readings = readings[:, None]
    target = target.to(torch.float64)[:, None]
    if attribute.discrete:
        wrong = (readings != target).to(torch.float64)
        wrong[torch.isnan(readings)] = math.nan
        return wrong.mean(1)
    return (readings - target).abs().mean(1)


def recovery_significance(
    attribute: Attribute,
    target: torch.Tensor,
    readings: torch.Tensor,
    baseline: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """R = 1 − err(a, readings) / err(a, baseline), over the labelled faces whose readings exist.

    ``readings``/``baseline`` ``(n,)`` or ``(n, S)``: the readings of each face, and of the face π
    paired it with (read against this face's label). ``weights`` ``(R, n)``: one R per row (the
    bootstrap); without it a 0-d tensor. NaN when the baseline makes no error.
    """
    error = reading_errors(attribute, target, readings)
    base = reading_errors(attribute, target, baseline)
    valid = ~attribute.missing_mask(target) & torch.isfinite(error) & torch.isfinite(base)
    w = torch.ones(1, target.shape[0], dtype=torch.float64) if weights is None else weights.to(torch.float64)
    w = w * valid.to(torch.float64)
    error, base = torch.nan_to_num(error), torch.nan_to_num(base)
    total = w.sum(1).clamp_min(1e-300)
    ratio = ((w @ error) / total) / ((w @ base) / total)
    out = 1.0 - torch.where((w @ base) > 0, ratio, torch.full_like(ratio, math.nan))
    out = torch.where(w.sum(1) > 0, out, torch.full_like(out, math.nan))
    return out[0] if weights is None else out


def sample_spread(attribute: Attribute, readings: torch.Tensor, scale: float = 1.0) -> float:
    """How much the readings ``(n, S)`` of the same z differ, averaged over the faces (see the module)."""
    readings = readings.to(torch.float64)
    readings = readings[torch.isfinite(readings).all(1)]
    if readings.shape[0] == 0 or readings.shape[1] < 2:
        return math.nan
    if attribute.discrete:
        classes = readings.long().clamp_min(0)
        counts = F.one_hot(classes, max(attribute.num_classes, int(classes.max()) + 1)).sum(1)  # (n, C)
        return float((1.0 - counts.max(1).values.to(torch.float64) / readings.shape[1]).mean())
    return float(readings.std(1).mean() / scale) if scale > 0 else math.nan


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties) over the pairs where both are finite."""
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
    if len(pairs) < 3:
        return math.nan

    def ranks(values: list[float]) -> torch.Tensor:
        t = torch.tensor(values, dtype=torch.float64)
        order = torch.argsort(t)
        r = torch.empty_like(t)
        r[order] = torch.arange(len(values), dtype=torch.float64)
        for v in torch.unique(t):  # ties share their mean rank
            tied = t == v
            r[tied] = r[tied].mean()
        return r

    ra, rb = ranks([p[0] for p in pairs]), ranks([p[1] for p in pairs])
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / denominator if denominator > 0 else math.nan


# --------------------------------------------------------------------------- the direct path


@torch.no_grad()
def direct_readings(
    embeddings: torch.Tensor, labels: Mapping[str, torch.Tensor], schema: AttributeSchema, folds: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Held-out readings h_k(z) ``(N,)`` float64 of every attribute from ridge probe heads on ``folds``.

    Each face is read by the head fitted without its fold: binary kinds by the head's class
    midpoint, categorical ones by the largest class score, continuous ones by the score itself
    (in the attribute's units). An attribute whose heads are undefined reads NaN.
    """
    from frx_plugin.leakage import build_targets, fit_probe_heads, score_rows
    from frx_plugin.leakage.metrics import ProbeStatistics

    x = embeddings.to(torch.float64)
    n, d = x.shape
    n_folds = int(folds.max()) + 1
    _, targets = build_targets(labels, schema, n)
    masked = [t.attribute.name for t in targets if not bool(t.labelled.all())]
    statistics = ProbeStatistics(schema, d, n_folds, masked, sync_on_compute=False)
    statistics.update(x, folds, {name: labels[name] for name in schema.names})
    shared, masked_statistics = statistics.compute()
    heads = fit_probe_heads(shared, masked_statistics, schema)
    scores = score_rows(x, folds, heads.weight, heads.bias)
    out: dict[str, torch.Tensor] = {}
    for t in targets:
        name = t.attribute.name
        s = scores[:, t.cols]
        if heads.reason[name]:
            out[name] = torch.full((n,), math.nan, dtype=torch.float64)
        elif t.attribute.kind == "binary":
            out[name] = (s[:, 0] > heads.threshold[folds, t.cols[0]]).to(torch.float64)
        elif t.attribute.kind == "categorical":
            out[name] = s.argmax(1).to(torch.float64)
        else:
            out[name] = s[:, 0]
    return out


# --------------------------------------------------------------------------- one pass




def genuine_mean_cosine(z: torch.Tensor, identity: torch.Tensor) -> float:
    """Mean cosine over ordered pairs of different faces of the same identity (NaN without any)."""
    ids, index = torch.unique(identity, return_inverse=True)
    sums = torch.zeros(ids.numel(), z.shape[1], dtype=torch.float64).index_add_(0, index, z)
    counts = torch.bincount(index, minlength=ids.numel()).to(torch.float64)
    pairs = float((counts * (counts - 1)).sum())
    if pairs == 0:
        return math.nan
    return float(((sums * sums).sum() - (z * z).sum()) / pairs)


def recovery_scalars(recovery: Mapping[str, Any]) -> dict[str, float]:
    """Logger names of a ``recovery`` entry: ``frx/recovery/<a>`` (+ ``/low``, ``/high``), ``frx/recovery_direct/<a>``,
    ``frx/recovery_spread/<a>`` and ``frx/decoder/identity_similarity``."""
    out: dict[str, float] = {}
    for name, entry in recovery.get("attributes", {}).items():
        two = entry.get("two_stage")
        if two is not None:
            out[f"frx/recovery/{name}"] = two["value"]
            out[f"frx/recovery/{name}/low"] = two["low"]
            out[f"frx/recovery/{name}/high"] = two["high"]
            out[f"frx/recovery_spread/{name}"] = entry.get("spread", math.nan)
        out[f"frx/recovery_direct/{name}"] = entry["direct"]["value"]
    similarity = recovery.get("identity_similarity", {})
    out["frx/decoder/identity_similarity"] = similarity.get("decoded", math.nan)
    return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(float(v))}
