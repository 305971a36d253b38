"""torchmetrics metrics of frx: state that accumulates batch by batch and reduces across processes.

``ProbeStatistics`` holds the sufficient statistics from which every ridge head of
:mod:`frx_plugin.recovery` is fitted (pass 1 of an analysis): per identity-disjoint fold, the
count, Σx, XᵀX, Σy, XᵀY and Σy² of all rows, and, for each attribute that may have missing
labels, the count, Σx and XᵀX of its *unlabelled* rows (labelled statistics are the
difference; missing labels are usually rare, so this is the cheap side). All states are float64
sums with ``dist_reduce_fx="sum"``: under DDP each rank updates with its own shard and
``compute()`` returns the statistics of the whole probe set.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torchmetrics import Metric

from frx_plugin.attributes import AttributeSchema
from frx_plugin.recovery import FoldStatistics, _astuple, _fold_statistics, build_targets


class ProbeStatistics(Metric):
    """Per-fold sufficient statistics of linear probes for every attribute of ``schema``.

    ``update(embeddings (B, D), folds (B,), labels {name: (B,)})``; ``compute()`` returns
    ``(shared, masked)``: the :class:`~frx_plugin.recovery.FoldStatistics` of all rows and, per
    attribute named in ``masked_attributes``, those of its labelled rows only (restricted to
    that attribute's target columns).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(
        self, schema: AttributeSchema, dim: int, n_folds: int, masked_attributes: Sequence[str] = (), **kwargs
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
        f64 = torch.float64
        self.add_state("count", torch.zeros(n_folds, dtype=f64), dist_reduce_fx="sum")
        self.add_state("sum_x", torch.zeros(n_folds, dim, dtype=f64), dist_reduce_fx="sum")
        self.add_state("gram", torch.zeros(n_folds, dim, dim, dtype=f64), dist_reduce_fx="sum")
        self.add_state("sum_y", torch.zeros(n_folds, width, dtype=f64), dist_reduce_fx="sum")
        self.add_state("cross", torch.zeros(n_folds, dim, width, dtype=f64), dist_reduce_fx="sum")
        self.add_state("sum_yy", torch.zeros(n_folds, width, dtype=f64), dist_reduce_fx="sum")
        m = len(self.masked_attributes)
        self.add_state("missing_count", torch.zeros(m, n_folds, dtype=f64), dist_reduce_fx="sum")
        self.add_state("missing_sum_x", torch.zeros(m, n_folds, dim, dtype=f64), dist_reduce_fx="sum")
        self.add_state("missing_gram", torch.zeros(m, n_folds, dim, dim, dtype=f64), dist_reduce_fx="sum")

    def update(self, embeddings: torch.Tensor, folds: torch.Tensor, labels: Mapping[str, torch.Tensor]) -> None:
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise ValueError(f"ProbeStatistics: embeddings must be (B, {self.dim}), got {tuple(embeddings.shape)}")
        x = embeddings.detach().to(self.gram.device, torch.float64)
        folds = folds.to(x.device)
        y, targets = build_targets({k: v.to(x.device) for k, v in labels.items()}, self.schema, x.shape[0])
        batch = _fold_statistics(x, y, folds, self.n_folds)
        for name, value in zip(("count", "sum_x", "gram", "sum_y", "cross", "sum_yy"), _astuple(batch)):
            getattr(self, name).add_(value)
        by_name = {t.attribute.name: t for t in targets}
        for i, name in enumerate(self.masked_attributes):
            gone = (~by_name[name].labelled).nonzero().squeeze(1)
            if gone.numel():
                missing = _fold_statistics(x[gone], x.new_zeros(gone.numel(), 0), folds[gone], self.n_folds)
                self.missing_count[i] += missing.count
                self.missing_sum_x[i] += missing.sum_x
                self.missing_gram[i] += missing.gram

    def compute(self) -> tuple[FoldStatistics, dict[str, FoldStatistics]]:
        shared = FoldStatistics(self.count, self.sum_x, self.gram, self.sum_y, self.cross, self.sum_yy)
        _, targets = build_targets({a.name: _empty_labels(a) for a in self.schema}, self.schema, 0)
        cols = {t.attribute.name: t.cols for t in targets}
        masked = {}
        for i, name in enumerate(self.masked_attributes):
            own = shared.columns(cols[name])
            masked[name] = FoldStatistics(
                own.count - self.missing_count[i], own.sum_x - self.missing_sum_x[i], own.gram - self.missing_gram[i],
                own.sum_y, own.cross, own.sum_yy,
            )
        return shared, masked


def _empty_labels(attribute) -> torch.Tensor:
    return torch.zeros(0, dtype=torch.int64 if attribute.discrete else torch.float32)
