"""The in-memory leakage analysis, :func:`analyze_embeddings`, and the report entries both passes share.

Metrics (pooled over the held-out folds, each labelled sample scored once by the head that
did not see its identity): binary — AUROC (Mann–Whitney, ties count 1/2) and balanced
accuracy with the threshold at the midpoint of the two training-class mean scores (the
equal-prior LDA cut, computed from the sufficient statistics); categorical — macro
one-vs-rest AUROC over the classes present and balanced accuracy of the argmax of the C
scores; continuous — R² = 1 − SSE/SST with SST around the mean of the evaluated labels.
Leakage: ℓ = max(0, 2·AUROC − 1) for discrete attributes, max(0, R²) for continuous ones.

Intervals: percentile 95% intervals from a Poisson bootstrap over identities: in replicate
r each identity gets a Poisson(1) multiplicity drawn from hash(seed, r, identity)
(:func:`frx_plugin.randomness.poisson_bootstrap_weights`), carried by all its images — the
streaming form of resampling identities with replacement, shared with
:func:`frx_plugin.leakage.streaming.analyze_stream`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from frx_plugin.attributes import Attribute, AttributeSchema
from frx_plugin.config import HEADS
from frx_plugin.errors import AnalysisError
from frx_plugin.leakage.functional import (
    MetricEstimate,
    auroc,
    auroc_columns,
    balanced_accuracy,
    bootstrap_estimate,
    normalised_leakage,
    r2_score,
)
from frx_plugin.leakage.logistic import fit_logistic_heads
from frx_plugin.leakage.ridge import Heads, ProbeHeads, class_midpoints, fit_probe_heads
from frx_plugin.leakage.statistics import (
    MIN_CLASS_SAMPLES,
    FoldStatistics,
    Target,
    build_targets,
    check_embeddings,
    check_identity,
    check_min_class_samples,
    class_name,
    identity_folds,
    identity_index,
    score_rows,
    too_few_samples,
)
from frx_plugin.randomness import poisson_bootstrap_weights
from frx_plugin.report import AttributeLeakage, Report

__all__ = ["analyze_embeddings", "leakage_entries", "probe_tensors", "HEADS"]

#: ``analyze_embeddings`` converts embeddings of up to this many entries to float64 once (else per block).
_CONVERT_ONCE_ENTRIES = 64 * 2**20
#: Replicates per chunk are chosen so that chunk × N stays under this many entries.
_BOOTSTRAP_CHUNK_ENTRIES = 4_000_000


# --------------------------------------------------------------------------- report entries (shared by both passes)


def _undefined(attribute: Attribute, metric: str, n: int, reason: str) -> AttributeLeakage:
    extra = {"balanced_accuracy": math.nan} if attribute.discrete else {}
    nan = math.nan
    return AttributeLeakage(attribute.name, attribute.kind, attribute.group, metric, nan, nan, nan, nan, nan, nan, n, extra, reason)


def leakage_entries(
    schema: AttributeSchema, heads: ProbeHeads, estimates: Mapping[str, Mapping[str, MetricEstimate]],
    min_class_samples: int = MIN_CLASS_SAMPLES, unreported: dict[str, float] | None = None,
) -> tuple[list[AttributeLeakage], list[str]]:
    """Report entries and warnings of every attribute, from its metric estimates (absent if undefined).

    An attribute whose metric is undefined, or a discrete one with a class of fewer than
    ``min_class_samples`` labelled samples, is NaN with its ``reason`` and a warning; the metric
    of the latter goes into ``unreported`` (a report's :attr:`~frx_plugin.report.Report.unreported`) when given.
    """
    leakage: list[AttributeLeakage] = []
    warnings: list[str] = []
    for attribute in schema:
        name = attribute.name
        metric = "auroc" if attribute.discrete else "r2"
        n_labelled = heads.n_labelled[name]
        reason = heads.reason[name]
        if not reason:
            reason = too_few_samples(attribute, heads.class_counts.get(name), min_class_samples)
            if reason and unreported is not None:
                unreported[name] = estimates[name][metric].value
        if reason:
            warnings.append(f"attribute {name!r}: {reason}")
            leakage.append(_undefined(attribute, metric, n_labelled, reason))
            continue
        if attribute.kind == "categorical":
            present = set(heads.present[name])
            absent = [c for c in range(attribute.num_classes) if c not in present]
            if absent:
                names = ", ".join(repr(class_name(attribute, c)) for c in absent)
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
                leakage=normalised_leakage(metric, value),
                leakage_low=normalised_leakage(metric, low),
                leakage_high=normalised_leakage(metric, high),
                n=n_labelled,
                extra=extra,
            )
        )
    return leakage, warnings


def probe_tensors(heads: ProbeHeads) -> dict[str, torch.Tensor]:
    """The heads fitted on all data (T, D) / (T,), NaN rows for undefined attributes, float32 on the CPU (for the report)."""
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
        "probe_directions": directions.to("cpu", torch.float32),
        "probe_bias": full_bias.to("cpu", torch.float32),
        "probe_penalty": full_penalty.to("cpu", torch.float32),
    }


# --------------------------------------------------------------------------- analyze_embeddings

def _use_logistic_heads(
    heads: ProbeHeads,
    x: torch.Tensor,
    folds: torch.Tensor,
    y: torch.Tensor,
    targets: list[Target],
    shared: FoldStatistics,
    masked: Mapping[str, FoldStatistics],
    C: float,
) -> None:
    """Replace the heads of every defined discrete attribute by logistic ones (all training sets).

    All their 0/1 columns are fitted at once; the binary cut is recomputed as the midpoint of
    the two training-class mean scores under the new head (from the statistics, as for ridge).
    """
    chosen = [t for t in targets if t.attribute.discrete and not heads.reason[t.attribute.name]]
    if not chosen:
        return
    cols = torch.cat([t.cols for t in chosen])
    labelled = torch.cat([t.labelled[:, None].expand(-1, t.cols.numel()) for t in chosen], 1)
    fitted = fit_logistic_heads(x, y.index_select(1, cols.to(y.device)), labelled, folds, shared.columns(cols), C=C)
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
        heads.threshold[:, t.cols] = class_midpoints(train, own)
        if not bool(fitted.converged[:, local].all()):
            heads.warnings.append(
                f"attribute {t.attribute.name!r}: the logistic head did not converge in {fitted.iterations} "
                f"iterations (preconditioned gradient {float(fitted.gradient[:, local].max()):.2g})"
            )


def _check_folds(folds: torch.Tensor, identity: torch.Tensor, n: int) -> tuple[torch.Tensor, int, list[str]]:
    if not isinstance(folds, torch.Tensor) or folds.ndim != 1 or folds.dtype.is_floating_point or folds.dtype == torch.bool:
        raise AnalysisError("folds must be a 1-D integer tensor of fold ids, one per sample")
    if folds.shape[0] != n:
        raise AnalysisError(f"folds has {folds.shape[0]} entries but embeddings have {n} rows")
    uniq, index = torch.unique(folds.cpu(), return_inverse=True)
    if uniq.numel() < 2:
        raise AnalysisError(f"folds: all samples are in one fold ({int(uniq[0])}); at least 2 folds are needed")
    warnings = []
    # on the CPU, with the identities: fold ids are checked there before any row moves
    identity = identity.cpu()
    n_identities = int(identity.max()) + 1
    lowest = torch.full((n_identities,), n, dtype=torch.int64, device="cpu").scatter_reduce(0, identity, index, "amin")
    highest = torch.full((n_identities,), -1, dtype=torch.int64, device="cpu").scatter_reduce(0, identity, index, "amax")
    shared = int((lowest != highest).sum())
    if shared:
        warnings.append(
            f"folds: {shared} identities have samples on both sides of a split; the leakage then measures "
            "memory of identities, not attributes (every head must be scored on identities it was not fitted on)"
        )
    return index.long(), int(uniq.numel()), warnings


def _evaluate(
    target: Target,
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
        assert predicted_binary is not None  # a binary head's predictions come with its scores
        value = area(0, classes == 1)
        return {"auroc": value, "balanced_accuracy": balanced_accuracy(predicted_binary.long(), classes, weights, 2)}
    per_class = [area(c, classes == c) for c in torch.unique(classes).tolist()]
    macro = torch.nanmean(torch.stack(per_class, -1), -1)
    predicted = scores.argmax(1)
    return {"auroc": macro, "balanced_accuracy": balanced_accuracy(predicted, classes, weights, attribute.num_classes)}


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
    min_class_samples: int = MIN_CLASS_SAMPLES,
    discrete_penalty: str = "logistic",
) -> Report:
    """Held-out leakage of every attribute of ``schema`` from ``embeddings`` (N, D).

    Heads for all attributes are ridge regressions fitted at once from per-fold sufficient
    statistics on identity-disjoint folds (:func:`identity_folds` with ``seed``, or the
    caller's ``folds``); metrics are pooled over the held-out folds, and intervals come
    from ``n_bootstrap`` Poisson replicates over identities
    (:func:`~frx_plugin.randomness.poisson_bootstrap_weights` with ``seed``; none: intervals
    are NaN). Missing labels (-1, NaN) are left out per attribute. An attribute whose metric is
    undefined (one class, constant values, no labels, a training part without two classes) is
    NaN with ``reason`` and a warning, and so is a binary or categorical one with a class of fewer
    than ``min_class_samples`` labelled samples (too few for a stable AUROC); bad input raises :class:`AnalysisError` (or
    :class:`~frx_plugin.attributes.SchemaError` for labels that do not fit the schema).
    :func:`~frx_plugin.leakage.streaming.analyze_stream` is the constant-memory twin.
    ``discrete_penalty``: how the ridge heads of 0/1 columns choose their penalty, "logistic" (the default,
    agreeing with the logistic reference) or "squared_error" (the continuous columns' inner-fold search:
    near-discriminant heads, which the counterfactual moves use).

    ``report.tensors``: ``probe_directions`` (T, D) float32, the heads fitted on all data,
    one row per target column in schema order (binary 1, categorical one per class,
    continuous 1; NaN rows for undefined attributes); ``probe_bias`` (T,) so that
    ``score = z @ probe_directions.T + probe_bias``; ``probe_penalty`` (T,) the ridge λ.
    These are always the ridge heads.

    Devices: every computation runs on the device of ``embeddings``; ``identity``, ``labels`` and
    ``folds`` may be on the CPU (they are moved there once). Only the report's numbers and its
    ``tensors`` (small, on the CPU) come back to the host.

    ``head="logistic"``: the held-out scores of binary and categorical attributes come from
    exact L2-penalised logistic heads instead (one-vs-rest per class, penalty ``1/C`` on the
    summed loss, scikit-learn's ``LogisticRegression(C=C)`` objective; see
    :mod:`frx_plugin.leakage.logistic`); continuous attributes keep their ridge heads. The report's
    ``head`` says which.
    """
    if head not in HEADS:
        raise AnalysisError(f"head must be one of {list(HEADS)}, got {head!r}")
    if not isinstance(C, (int, float)) or isinstance(C, bool) or not math.isfinite(C) or C <= 0:
        raise AnalysisError(f"C (the inverse logistic penalty) must be a positive number, got {C!r}")
    check_min_class_samples(min_class_samples)
    rows = _checked_rows(embeddings, identity, labels, schema, n_folds=n_folds, n_bootstrap=n_bootstrap, seed=seed, folds=folds)
    heads, y_all, targets = _fitted_heads(rows, schema, head, float(C), discrete_penalty)
    # held-out scores: each sample scored by the head of the training set without its fold
    scores = score_rows(rows.x, rows.folds, heads.weight, heads.bias)
    inputs = _attribute_inputs(targets, heads, scores, rows.folds, rows.labels)
    points = _point_metrics(targets, inputs, scores, y_all)
    replicates = _bootstrap_metrics(targets, inputs, rows.identity, seed, n_bootstrap)
    unreported: dict[str, float] = {}
    leakage, more = leakage_entries(schema, heads, _estimates(targets, points, replicates), min_class_samples, unreported)
    return Report(
        unreported=unreported,
        leakage=leakage,
        n_samples=rows.x.shape[0],
        n_identities=rows.n_identities,
        n_folds=rows.n_folds,
        tensors=probe_tensors(heads),
        warnings=rows.warnings + heads.warnings + more,
        head=head,
    )


@dataclass
class _Rows:
    """The checked rows of an analysis, grouped by fold (every metric is invariant to the order)."""

    x: torch.Tensor  # (N, D): float64 when small enough to convert once (for the statistics and the scoring)
    as_given: torch.Tensor  # (N, D) in the working precision: the logistic solver's data passes run in it
    identity: torch.Tensor  # (N,) on the CPU, where the bootstrap weights are drawn
    folds: torch.Tensor  # (N,) fold ids, non-decreasing, on the device of x
    labels: dict[str, torch.Tensor]  # on the device of x
    n_folds: int
    n_identities: int
    warnings: list[str]


def _checked_rows(
    embeddings: torch.Tensor,
    identity: torch.Tensor,
    labels: Mapping[str, torch.Tensor],
    schema: AttributeSchema,
    *,
    n_folds: int,
    n_bootstrap: int,
    seed: int,
    folds: torch.Tensor | None,
) -> _Rows:
    """Check the inputs of :func:`analyze_embeddings`, draw (or check) the folds and group the rows by fold.

    Folds and the order are decided on the CPU; the rows, folds and labels then go to the
    embeddings' device once.
    """
    x = check_embeddings(embeddings)
    n = x.shape[0]
    check_identity(identity, n)
    identity = identity.detach().cpu()
    if not isinstance(n_bootstrap, int) or n_bootstrap < 0:
        raise AnalysisError(f"n_bootstrap must be a non-negative integer, got {n_bootstrap!r}")
    identity_ids, n_identities = identity_index(identity)
    warnings: list[str] = []
    if folds is None:
        folds = identity_folds(identity, n_folds, seed)
    else:
        if n_identities < 2:
            raise AnalysisError(f"identity: only {n_identities} identity in {n} samples; at least 2 are needed")
        folds, n_folds, fold_warnings = _check_folds(folds, identity_ids, n)
        warnings += fold_warnings
    schema.validate(labels, n)
    labels = {name: labels[name].detach().cpu() for name in schema.names}
    # rows grouped by fold (every metric is invariant to the order): per-fold work takes slices
    order = None if bool((folds[1:] >= folds[:-1]).all()) else torch.argsort(folds, stable=True)
    if order is not None:
        x, folds, identity = x.index_select(0, order.to(x.device)), folds[order], identity[order]
        labels = {name: value[order] for name, value in labels.items()}
    folds = folds.to(x.device)
    labels = {name: value.to(x.device) for name, value in labels.items()}
    as_given = x
    if x.numel() <= _CONVERT_ONCE_ENTRIES:
        x = x.to(torch.float64)  # once, for both the statistics and the scoring
    return _Rows(x, as_given, identity, folds, labels, n_folds, n_identities, warnings)


def _fitted_heads(rows: _Rows, schema: AttributeSchema, head: str, C: float,
                  discrete_penalty: str = "logistic") -> tuple[ProbeHeads, torch.Tensor, list[Target]]:
    """Pass 1: the probe statistics of all rows, then the heads (ridge, or logistic for discrete kinds)."""
    # imported here: torchmetrics loads with the first analysis, not with this package
    from frx_plugin.leakage.metrics import ProbeStatistics

    n, d = rows.x.shape
    y_all, targets = build_targets(rows.labels, schema, n)
    masked_names = [t.attribute.name for t in targets if not bool(t.labelled.all())]
    # all rows are here, in this process: no cross-process reduction (sync_on_compute=False)
    statistics = ProbeStatistics(schema, d, rows.n_folds, masked_names, device=rows.x.device, sync_on_compute=False)
    statistics.update(rows.x, rows.folds, rows.labels)
    shared, masked = statistics.compute()
    folds_with_data = [int(f) for f in torch.unique(rows.folds).tolist()]
    heads = fit_probe_heads(shared, masked, schema, folds_with_data, fit_discrete=head == "ridge", discrete_penalty=discrete_penalty)
    if head == "logistic":
        _use_logistic_heads(heads, rows.as_given, rows.folds, y_all, targets, shared, masked, C)
    return heads, y_all, targets


#: Per attribute: its labelled rows, their held-out scores (m, width), the binary prediction (or None), the labels.
_Inputs = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None", torch.Tensor]


def _attribute_inputs(
    targets: list[Target], heads: ProbeHeads, scores: torch.Tensor, folds: torch.Tensor, labels: Mapping[str, torch.Tensor]
) -> list[_Inputs]:
    """Each attribute's labelled rows, scores and binary predictions (also sets each target's ``reason``)."""
    n, device = scores.shape[0], scores.device
    threshold = heads.threshold[folds]  # (N, T)
    inputs = []
    for t in targets:
        t.reason = heads.reason[t.attribute.name]
        complete = bool(t.labelled.all())
        rows = torch.arange(n, device=device) if complete else t.labelled.nonzero().squeeze(1)
        s = scores.index_select(1, t.cols.to(device))
        s = s if complete else s[rows]
        if t.attribute.kind == "binary":
            cut = threshold[:, int(t.cols[0])]
            predicted = s[:, 0] > (cut if complete else cut[rows])
        else:
            predicted = None
        inputs.append((rows, s, predicted, labels[t.attribute.name][rows]))
    return inputs


def _point_metrics(targets: list[Target], inputs: list[_Inputs], scores: torch.Tensor, y_all: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Unweighted metrics of every attribute ({} for undefined ones).

    The AUROCs of all complete discrete columns come from one batched sort.
    """
    batched = [i for i, t in enumerate(targets) if not t.reason and t.attribute.discrete and bool(t.labelled.all())]
    column_auroc: dict[int, torch.Tensor] = {}
    if batched:
        cols = torch.cat([targets[i].cols for i in batched]).to(scores.device)
        areas = auroc_columns(scores.index_select(1, cols), y_all.index_select(1, cols) > 0.5)
        offset = 0
        for i in batched:
            width = targets[i].cols.numel()
            column_auroc[i] = areas[offset : offset + width]
            offset += width
    points: list[dict[str, torch.Tensor]] = []
    for i, t in enumerate(targets):
        if t.reason:
            points.append({})
            continue
        _, s, predicted, raw = inputs[i]
        if t.attribute.discrete and i not in column_auroc:
            positive = torch.nn.functional.one_hot(raw.long(), 2 if t.attribute.kind == "binary" else t.cols.numel()).bool()
            column_auroc[i] = auroc_columns(s, positive[:, 1:] if t.attribute.kind == "binary" else positive)
        points.append(_evaluate(t, s, predicted, raw, None, column_auroc.get(i)))
    return points


def _bootstrap_metrics(
    targets: list[Target], inputs: list[_Inputs], identity: torch.Tensor, seed: int, n_bootstrap: int
) -> list[dict[str, list[torch.Tensor]]]:
    """Per attribute and metric, its values in the Poisson bootstrap replicates over identities (in chunks).

    ``identity`` on the CPU; each chunk of weights is drawn there and moved to the scores' device once.
    """
    n = identity.shape[0]
    device = inputs[0][1].device if inputs else identity.device
    chunk = max(1, _BOOTSTRAP_CHUNK_ENTRIES // max(n, 1))
    replicates: list[dict[str, list[torch.Tensor]]] = [dict() for _ in targets]
    for start in range(0, n_bootstrap, chunk):
        w = poisson_bootstrap_weights(identity, seed, min(chunk, n_bootstrap - start), first_replicate=start, device=device)
        for i, t in enumerate(targets):
            if t.reason:
                continue
            rows, s, predicted, raw = inputs[i]
            w_rows = w if rows.numel() == n else w.index_select(1, rows)
            for key, value in _evaluate(t, s, predicted, raw, w_rows).items():
                replicates[i].setdefault(key, []).append(value)
    return replicates


def _estimates(
    targets: list[Target], points: list[dict[str, torch.Tensor]], replicates: list[dict[str, list[torch.Tensor]]]
) -> dict[str, dict[str, MetricEstimate]]:
    """Per defined attribute and metric: the point value with its bootstrap interval."""
    return {
        t.attribute.name: {
            key: bootstrap_estimate(value[0] if value.ndim else value, torch.cat(replicates[i][key]) if replicates[i].get(key) else None)
            for key, value in points[i].items()
        }
        for i, t in enumerate(targets)
        if not t.reason
    }
