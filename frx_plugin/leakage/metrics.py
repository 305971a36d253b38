"""torchmetrics metrics of the leakage analysis: state that accumulates batch by batch and reduces across processes.

Thin :class:`torchmetrics.Metric` classes over :mod:`frx_plugin.leakage.statistics` (pass 1) and
:mod:`frx_plugin.leakage.functional` (pass 2).

``ProbeStatistics`` holds the sufficient statistics from which every ridge head of
:mod:`frx_plugin.leakage.ridge` is fitted (pass 1 of an analysis): per identity-disjoint fold, the
count, Σx, XᵀX, Σy, XᵀY and Σy² of all rows, and, for each attribute that may have missing
labels, the count, Σx and XᵀX of its *unlabelled* rows (labelled statistics are the
difference; missing labels are usually rare, so this is the cheap side). All states are float64
sums with ``dist_reduce_fx="sum"``: under DDP each rank updates with its own shard and
``compute()`` returns the statistics of the whole probe set.

``HeldOutLeakage`` is pass 2, the scoring pass in constant memory: constructed from the heads
that :func:`frx_plugin.leakage.ridge.fit_probe_heads` fitted on pass 1, it scores every row with the
head of its fold's training set and accumulates, for replicate 0 (weight 1, the point
estimate) and the Poisson bootstrap replicates 1..B over identities
(:func:`frx_plugin.randomness.poisson_bootstrap_weights`), weighted histograms of the scores
per class, confusion matrices and the sums of R². Its states too are float64 sums.

Binned AUROC. Bins are monotone in the score (per column: sorted edges, half an even grid over
the whole score range, half an even grid over each fold's own range, so folds whose heads give
scores of very different spread are all resolved). Pairs in different bins are ordered
exactly; a pair in the same bin counts ½. The error against the exact (Mann–Whitney) AUROC is
therefore at most ½·Σ_b h⁺_b h⁻_b / (n⁺n⁻), the weight of same-bin pairs
(:func:`~frx_plugin.leakage.functional.histogram_auroc_tie_bound`): ≈ ½·width·∫f⁺f⁻, a few
1e-3 with the default 1024 bins over mean ± 8 sd. In practice the error is ~10× smaller: within a bin the exact order is close
to a coin toss, so the errors largely cancel (an O(width²) bias).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torchmetrics import Metric

from frx_plugin.attributes import AttributeSchema
from frx_plugin.leakage.functional import MetricEstimate, bootstrap_estimate, histogram_auroc
from frx_plugin.leakage.ridge import ProbeHeads
from frx_plugin.leakage.statistics import FoldStatistics, build_targets, fold_statistics, score_rows, target_layout
from frx_plugin.randomness import poisson_bootstrap_weights

__all__ = ["ProbeStatistics", "HeldOutLeakage", "DEFAULT_BINS"]


class ProbeStatistics(Metric):
    """Per-fold sufficient statistics of linear probes for every attribute of ``schema``.

    ``update(embeddings (B, D), folds (B,), labels {name: (B,)})``; ``compute()`` returns
    ``(shared, masked)``: the :class:`~frx_plugin.leakage.statistics.FoldStatistics` of all rows and, per
    attribute named in ``masked_attributes``, those of its labelled rows only (restricted to
    that attribute's target columns).

    The states are made on ``device`` (default the CPU; the metric moves with ``.to(device)``
    too); ``update`` moves each batch to the states' device, and the statistics are computed there.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None
    # the states (add_state in __init__)
    count: torch.Tensor
    sum_x: torch.Tensor
    gram: torch.Tensor
    sum_y: torch.Tensor
    cross: torch.Tensor
    sum_yy: torch.Tensor
    missing_count: torch.Tensor
    missing_sum_x: torch.Tensor
    missing_gram: torch.Tensor

    def __init__(
        self, schema: AttributeSchema, dim: int, n_folds: int, masked_attributes: Sequence[str] = (),
        device: torch.device | str = "cpu", **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if dim < 1 or n_folds < 2:
            raise ValueError(f"ProbeStatistics: dim must be positive and n_folds at least 2, got {dim}, {n_folds}")
        unknown = [name for name in masked_attributes if name not in schema]
        if unknown:
            raise KeyError(f"ProbeStatistics: masked attribute(s) {unknown} not in the schema {list(schema.names)}")
        self.schema = schema
        self.dim = dim
        self.n_folds = n_folds
        self.masked_attributes = tuple(masked_attributes)
        width = sum(a.num_classes if a.kind == "categorical" else 1 for a in schema)
        # made on their device at once: torchmetrics' .to() starts from its record of the default
        # device at construction, which need not be a device that holds data
        zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=device)  # noqa: E731
        self.add_state("count", zeros(n_folds), dist_reduce_fx="sum")
        self.add_state("sum_x", zeros(n_folds, dim), dist_reduce_fx="sum")
        self.add_state("gram", zeros(n_folds, dim, dim), dist_reduce_fx="sum")
        self.add_state("sum_y", zeros(n_folds, width), dist_reduce_fx="sum")
        self.add_state("cross", zeros(n_folds, dim, width), dist_reduce_fx="sum")
        self.add_state("sum_yy", zeros(n_folds, width), dist_reduce_fx="sum")
        m = len(self.masked_attributes)
        self.add_state("missing_count", zeros(m, n_folds), dist_reduce_fx="sum")
        self.add_state("missing_sum_x", zeros(m, n_folds, dim), dist_reduce_fx="sum")
        self.add_state("missing_gram", zeros(m, n_folds, dim, dim), dist_reduce_fx="sum")

    def update(self, embeddings: torch.Tensor, folds: torch.Tensor, labels: Mapping[str, torch.Tensor]) -> None:
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise ValueError(f"ProbeStatistics: embeddings must be (B, {self.dim}), got {tuple(embeddings.shape)}")
        x = embeddings.detach().to(self.gram.device)
        folds = folds.to(x.device)
        y, targets = build_targets({k: v.to(x.device) for k, v in labels.items()}, self.schema, x.shape[0])
        batch = fold_statistics(x, y, folds, self.n_folds)
        for name, value in zip(("count", "sum_x", "gram", "sum_y", "cross", "sum_yy"), batch.tensors()):
            getattr(self, name).add_(value)
        by_name = {t.attribute.name: t for t in targets}
        for i, name in enumerate(self.masked_attributes):
            gone = (~by_name[name].labelled).nonzero().squeeze(1)
            if gone.numel():
                missing = fold_statistics(x[gone], x.new_zeros(gone.numel(), 0), folds[gone], self.n_folds)
                self.missing_count[i] += missing.count
                self.missing_sum_x[i] += missing.sum_x
                self.missing_gram[i] += missing.gram

    def compute(self) -> tuple[FoldStatistics, dict[str, FoldStatistics]]:
        shared = FoldStatistics(self.count, self.sum_x, self.gram, self.sum_y, self.cross, self.sum_yy)
        cols = {t.attribute.name: t.cols for t in target_layout(self.schema)}
        masked = {}
        for i, name in enumerate(self.masked_attributes):
            own = shared.columns(cols[name])
            masked[name] = FoldStatistics(
                own.count - self.missing_count[i], own.sum_x - self.missing_sum_x[i], own.gram - self.missing_gram[i],
                own.sum_y, own.cross, own.sum_yy,
            )
        return shared, masked


# --------------------------------------------------------------------------- pass 2: held-out leakage

#: Histogram bins per score column and class.
DEFAULT_BINS = 1024


#: Share of the bin edges spread evenly over the whole score range of a column (the rest: per fold).
GLOBAL_EDGE_SHARE = 0.5


def _bin_edges(low: torch.Tensor, high: torch.Tensor, n_bins: int) -> torch.Tensor:
    """(T, E) sorted bin edges per column: an even grid over the whole range, plus one per fold.

    ``low`` / ``high`` (F, T) from :class:`~frx_plugin.leakage.ridge.ProbeHeads`. Each fold's
    held-out scores come from their own head and may sit far from the other folds' (a
    signal-free column: tiny spread, fold-specific intercepts), so besides the even grid over
    [min low, max high] (``GLOBAL_EDGE_SHARE`` of the edges) every fold gets an even grid
    across its own range. About ``n_bins`` edges, E + 1 bins.
    """
    n_folds = low.shape[0]
    n_global = max(2, int(n_bins * GLOBAL_EDGE_SHARE))
    n_fold = max(2, (n_bins - n_global) // n_folds)
    grid = lambda k: torch.linspace(0.0, 1.0, k, dtype=torch.float64, device=low.device)  # noqa: E731
    overall_low, overall_high = low.amin(0), high.amax(0)  # (T,)
    overall = overall_low[:, None] + (overall_high - overall_low)[:, None] * grid(n_global)  # (T, k)
    per_fold = (low[:, :, None] + (high - low)[:, :, None] * grid(n_fold)).permute(1, 0, 2).reshape(low.shape[1], -1)
    return torch.cat([overall, per_fold], 1).sort(1).values.contiguous()


def _bin_index(scores: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """(m, width) bin of each score: the number of its column's ``edges`` (width, E) at or below it.

    Monotone in the score, so different bins never reverse a pair's order; scores outside
    every range go to the two edge bins.
    """
    return torch.searchsorted(edges, scores.T.contiguous(), right=True).T


def _leakage_update(metric: HeldOutLeakage, x: torch.Tensor, identity: torch.Tensor, folds: torch.Tensor, labels: Mapping[str, torch.Tensor]) -> None:
    """Score the rows of one batch and add their weighted histograms, confusions and sums to the states.

    ``x``, ``folds`` and ``labels`` on the device of the heads and states; ``identity`` on the CPU
    (the bootstrap weights are drawn there and moved over once).
    """
    heads, bins = metric.heads, metric.edges.shape[1] + 1
    n, device = x.shape[0], x.device
    scores = score_rows(x, folds, heads.weight, heads.bias)
    weights = torch.cat(
        [
            torch.ones(1, n, dtype=torch.float64, device=device),
            poisson_bootstrap_weights(identity, metric.seed, metric.n_replicates, device=device),
        ]
    )  # (R, n)
    for i, attribute in enumerate(metric.schema):
        if heads.reason[attribute.name]:
            continue
        raw = labels[attribute.name]
        labelled = ~attribute.missing_mask(raw)
        complete = bool(labelled.all())
        rows = torch.arange(n, device=device) if complete else labelled.nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        first = int(heads.cols[attribute.name][0])  # the columns are a layout on the CPU
        cols = heads.cols[attribute.name].to(device)
        w = weights if complete else weights.index_select(1, rows)  # no copy when every label is there
        if attribute.kind == "continuous":
            centre = heads.label_centre[first]
            y = raw[rows].to(torch.float64)
            residual = y - scores[rows, first]
            y = y - centre
            sums = torch.stack([torch.ones_like(y), y, y * y, residual * residual], 1)
            getattr(metric, f"moments_{i}").add_(w @ sums)
            continue
        target = raw[rows].long()
        s = scores.index_select(1, cols) if complete else scores[rows][:, cols]  # (m, width)
        width = cols.numel()
        if attribute.kind == "binary":
            predicted = (s[:, 0] > heads.threshold[folds[rows], first]).long()
            positive = (target == 1).long()[:, None]
            n_classes = 2
        else:
            predicted = s.argmax(1)
            positive = (target[:, None] == torch.arange(width, device=device)[None, :]).long()
            n_classes = width
        bin_index = _bin_index(s, metric.edges[cols])  # (m, width)
        flat = torch.arange(width, device=device)[None, :] * (2 * bins) + positive * bins + bin_index  # (m, width)
        histogram = getattr(metric, f"histogram_{i}").view(weights.shape[0], -1)
        for c in range(width):  # one column at a time: no (R, m·width) copy of the weights
            histogram.index_add_(1, flat[:, c], w)
        confusion = getattr(metric, f"confusion_{i}")
        confusion.view(confusion.shape[0], -1).index_add_(1, target * n_classes + predicted, w)


def _leakage_compute(metric: HeldOutLeakage) -> dict[str, dict[str, MetricEstimate]]:
    """Per defined attribute: its metrics (replicate 0) with percentile intervals (replicates 1..B)."""
    heads = metric.heads
    out: dict[str, dict[str, MetricEstimate]] = {}
    for i, attribute in enumerate(metric.schema):
        name = attribute.name
        if heads.reason[name]:
            continue
        if attribute.kind == "continuous":
            total, sum_y, sum_yy, sse = getattr(metric, f"moments_{i}").unbind(1)
            sst = sum_yy - sum_y**2 / total.clamp_min(1e-300)
            r2 = torch.where(sst > 1e-12 * sum_yy.clamp_min(1e-300), 1.0 - sse / sst.clamp_min(1e-300), torch.full_like(sst, math.nan))
            values = {"r2": r2}
        else:
            histogram = getattr(metric, f"histogram_{i}")  # (R, width, 2, bins)
            if attribute.kind == "binary":
                area = histogram_auroc(histogram[:, 0, 0], histogram[:, 0, 1])
            else:
                per_class = [histogram_auroc(histogram[:, c, 0], histogram[:, c, 1]) for c in heads.present[name]]
                area = torch.nanmean(torch.stack(per_class, -1), -1)
            confusion = getattr(metric, f"confusion_{i}")  # (R, true, predicted)
            hits = torch.diagonal(confusion, dim1=1, dim2=2)
            totals = confusion.sum(2)
            recall = torch.where(totals > 0, hits / totals.clamp_min(1e-300), torch.full_like(hits, math.nan))
            values = {"auroc": area, "balanced_accuracy": torch.nanmean(recall, 1)}
        out[name] = {key: bootstrap_estimate(v[0], v[1:] if v.shape[0] > 1 else None) for key, v in values.items()}
    return out


class HeldOutLeakage(Metric):
    """Held-out leakage of every attribute, accumulated batch by batch (pass 2 of an analysis).

    ``heads``: :class:`~frx_plugin.leakage.ridge.ProbeHeads` from
    :func:`~frx_plugin.leakage.ridge.fit_probe_heads` (fitted on the whole probe set, the same on
    every rank). ``update(embeddings (b, D), identity (b,), folds (b,), labels {name: (b,)})``
    scores each row with the head that did not see its fold and adds it, with weight 1
    (replicate 0) and its identity's Poisson weight in replicates 1..``n_replicates``, to
    per-attribute states (R = n_replicates + 1 rows): binary and categorical kinds a
    histogram (R, columns, 2, ``n_bins``) of each column's scores for "not this class" / "this
    class" (binary: the one column vs class 1) on about ``n_bins`` bins whose edges are the union
    of even grids over each fold's score range (``heads.score_low/score_high``; scores outside
    go to the edge bins), and the confusion (R, C, C) of the thresholded /
    argmax prediction; continuous kinds (R, 4) sums Σw, Σw·y, Σw·y², Σw·(y − ŷ)² (y centred on
    ``heads.label_centre``). Missing labels are skipped; undefined attributes are not scored.
    ``compute()`` → {attribute: {metric: MetricEstimate}} (``auroc`` and
    ``balanced_accuracy``, or ``r2``) for the defined attributes.

    Everything lives on the device of ``heads`` (that of the statistics they were fitted from):
    the states are made there, and ``update`` moves each batch there (its identities stay on the
    CPU, where the bootstrap weights are drawn).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(
        self,
        heads: ProbeHeads,
        schema: AttributeSchema,
        n_replicates: int = 200,
        seed: int = 0,
        n_bins: int = DEFAULT_BINS,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if n_replicates < 0 or n_bins < 2:
            raise ValueError(f"HeldOutLeakage: n_replicates must be >= 0 and n_bins >= 2, got {n_replicates}, {n_bins}")
        missing = [a.name for a in schema if a.name not in heads.cols]
        if missing:
            raise KeyError(f"HeldOutLeakage: the heads have no columns for attribute(s) {missing}")
        self.heads = heads
        self.schema = schema
        self.n_replicates = int(n_replicates)
        self.seed = int(seed)
        self.edges = _bin_edges(heads.score_low, heads.score_high, int(n_bins))  # (T, E)
        self.n_bins = self.edges.shape[1] + 1
        r = self.n_replicates + 1
        zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=heads.weight.device)  # noqa: E731
        for i, attribute in enumerate(schema):
            if attribute.kind == "continuous":
                self.add_state(f"moments_{i}", zeros(r, 4), dist_reduce_fx="sum")
            else:
                width = heads.cols[attribute.name].numel()
                n_classes = 2 if attribute.kind == "binary" else width
                self.add_state(f"histogram_{i}", zeros(r, width, 2, self.n_bins), dist_reduce_fx="sum")
                self.add_state(f"confusion_{i}", zeros(r, n_classes, n_classes), dist_reduce_fx="sum")

    def update(self, embeddings: torch.Tensor, identity: torch.Tensor, folds: torch.Tensor, labels: Mapping[str, torch.Tensor]) -> None:
        dim = self.heads.weight.shape[1]
        if embeddings.ndim != 2 or embeddings.shape[1] != dim:
            raise ValueError(f"HeldOutLeakage: embeddings must be (B, {dim}), got {tuple(embeddings.shape)}")
        device = self.heads.weight.device
        x = embeddings.detach().to(device)
        labels = {a.name: labels[a.name].detach().to(device) for a in self.schema}
        _leakage_update(self, x, identity.detach().cpu(), folds.detach().to(device).long(), labels)

    def compute(self) -> dict[str, dict[str, MetricEstimate]]:
        return _leakage_compute(self)
