"""Streaming leakage analysis: :func:`analyze_stream`, the constant-memory twin of
:func:`frx_plugin.leakage.estimate.analyze_embeddings`.

The probe set arrives as chunks ``(embeddings (b, D), identity (b,), labels {name: (b,)})``
from a callable that can be iterated more than once (a re-iterable loader). Three passes:

0. label scan — which attributes have missing labels (a tiny summed metric over the label
   columns; :class:`~frx_plugin.leakage.metrics.ProbeStatistics` must know them before pass 1, and
   under DDP every rank must agree). Skipped when ``masked_attributes`` is given.
1. :class:`~frx_plugin.leakage.metrics.ProbeStatistics` — per-fold sufficient statistics; then
   :func:`~frx_plugin.leakage.ridge.fit_probe_heads` fits the heads, thresholds and score ranges.
2. :class:`~frx_plugin.leakage.metrics.HeldOutLeakage` — held-out scores into weighted histograms,
   confusions and R² sums, for the point estimate and every Poisson bootstrap replicate.

Folds come from ``identity_folds(identity, n_folds, seed)`` on the full identity vector; since
they are identity-disjoint, a row's fold is its identity's fold, so chunks may come in any
order, any size and from any rank (each rank streaming its own shard, with
``sync_on_compute=True``). Memory: the identity/fold vectors (K identities), the statistics
(F·D² per group) and the pass-2 states ((B + 1) × columns × 2 × bins) — nothing grows with N.
Results equal :func:`~frx_plugin.leakage.estimate.analyze_embeddings`'s to rounding, except
AUROC, which is computed from score histograms (see :mod:`frx_plugin.leakage.metrics` for its
error bound).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torchmetrics import Metric

from frx_plugin.attributes import AttributeSchema
from frx_plugin.errors import AnalysisError
from frx_plugin.leakage.estimate import leakage_entries, probe_tensors
from frx_plugin.leakage.metrics import DEFAULT_BINS, HeldOutLeakage, ProbeStatistics
from frx_plugin.leakage.ridge import fit_probe_heads
from frx_plugin.leakage.statistics import MIN_CLASS_SAMPLES, check_embeddings, check_identity, check_min_class_samples, identity_folds
from frx_plugin.report import Report

__all__ = ["analyze_stream", "FoldLookup"]

Chunk = tuple[torch.Tensor, torch.Tensor, Mapping[str, torch.Tensor]]


class FoldLookup:
    """Fold of a row from its identity: ``identity_folds`` of the full identity vector, per identity (on the CPU)."""

    def __init__(self, identity: torch.Tensor, n_folds: int, seed: int) -> None:
        check_identity(identity)
        identity = identity.detach().cpu().long()
        folds = identity_folds(identity, n_folds, seed)
        self.identities, inverse = torch.unique(identity, return_inverse=True)
        self.fold = torch.zeros(self.identities.numel(), dtype=torch.int64, device="cpu").scatter_(0, inverse, folds)

    def __call__(self, identity: torch.Tensor) -> torch.Tensor:
        identity = identity.detach().cpu().long()
        position = torch.searchsorted(self.identities, identity).clamp_max(self.identities.numel() - 1)
        unknown = self.identities[position] != identity
        if bool(unknown.any()):
            raise AnalysisError(
                f"identity {int(identity[unknown][0])} of a chunk is not in the identity vector given to analyze_stream"
            )
        return self.fold[position]


class _MissingLabels(Metric):
    """Pass 0: rows and missing labels per attribute (summed over ranks), on the CPU with the labels."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = None
    missing: torch.Tensor  # the states (add_state in __init__)
    rows: torch.Tensor
    dim: torch.Tensor

    def __init__(self, schema: AttributeSchema, **kwargs) -> None:
        super().__init__(**kwargs)
        self.schema = schema
        self.add_state("missing", torch.zeros(len(schema.names), dtype=torch.float64, device="cpu"), dist_reduce_fx="sum")
        self.add_state("rows", torch.zeros((), dtype=torch.float64, device="cpu"), dist_reduce_fx="sum")
        self.add_state("dim", torch.zeros((), dtype=torch.float64, device="cpu"), dist_reduce_fx="max")

    def update(self, embeddings: torch.Tensor, labels: Mapping[str, torch.Tensor]) -> None:
        self.rows += embeddings.shape[0]
        self.dim.fill_(max(float(self.dim), float(embeddings.shape[1])))
        for i, attribute in enumerate(self.schema):
            self.missing[i] += attribute.missing_mask(labels[attribute.name]).sum()

    def compute(self) -> tuple[list[str], int]:
        names = [a.name for i, a in enumerate(self.schema) if float(self.missing[i]) > 0]
        return names, int(self.dim)


def _checked(chunk: Chunk, schema: AttributeSchema, index: int, dim: int | None = None) -> Chunk:
    """A checked chunk: its embeddings on their own device, its identities and labels on the CPU."""
    try:
        embeddings, identity, labels = chunk
    except (TypeError, ValueError):
        raise AnalysisError(f"chunk {index}: expected (embeddings, identity, labels), got {type(chunk).__name__}") from None
    try:
        x = check_embeddings(embeddings)
    except AnalysisError as exc:
        raise AnalysisError(f"chunk {index}: {exc}") from None
    if dim is not None and x.shape[1] != dim and x.shape[0] > 0:
        raise AnalysisError(f"chunk {index}: embeddings have D = {x.shape[1]} columns, but the chunks before had D = {dim}")
    check_identity(identity, x.shape[0])
    schema.validate(labels, x.shape[0], source=f"chunk {index} labels")
    return x, identity.detach().cpu(), {name: labels[name].detach().cpu() for name in schema.names}


def _masked_attributes(chunks: Callable[[], Iterable[Chunk]], schema: AttributeSchema, masked_attributes: Sequence[str] | None,
                       **sync: Any) -> tuple[Sequence[str], int | None]:
    """The attributes that may have missing labels (given, or found by pass 0 over the chunks) and, when scanned, D."""
    if masked_attributes is not None:
        unknown = [name for name in masked_attributes if name not in schema]
        if unknown:
            raise AnalysisError(f"masked_attributes: {unknown} not in the schema {list(schema.names)}")
        return masked_attributes, None
    scan = _MissingLabels(schema, **sync)
    first_dim = None
    for i, chunk in enumerate(chunks()):
        x, _, labels = _checked(chunk, schema, i, first_dim)
        first_dim = first_dim or x.shape[1]
        scan.update(x, labels)
    return scan.compute()


@torch.no_grad()
def _stream_statistics(chunks: Callable[[], Iterable[Chunk]], schema: AttributeSchema, lookup: FoldLookup, n_folds: int,
                       masked_attributes: list[str], dim: int | None, *, sync_on_compute: bool,
                       dist_sync_fn: Callable | None) -> tuple[Any, Any, int]:
    """The first pass over the stream: the per-fold sufficient statistics (shared, masked) and the width D."""
    statistics = None
    for i, chunk in enumerate(chunks()):
        x, ident, labels = _checked(chunk, schema, i, dim)
        if statistics is None:
            dim = dim or x.shape[1]
            statistics = ProbeStatistics(
                schema, dim, n_folds, masked_attributes, device=x.device, sync_on_compute=sync_on_compute, dist_sync_fn=dist_sync_fn
            )
        statistics.update(x, lookup(ident), labels)
    if statistics is None or dim is None:
        raise AnalysisError("chunks() yielded no chunks")
    shared, masked = statistics.compute()
    return shared, masked, dim


def analyze_stream(
    chunks: Callable[[], Iterable[Chunk]],
    identity: torch.Tensor,
    schema: AttributeSchema,
    *,
    n_folds: int = 5,
    n_bootstrap: int = 200,
    seed: int = 0,
    sync_on_compute: bool = False,
    masked_attributes: Sequence[str] | None = None,
    n_bins: int = DEFAULT_BINS,
    dist_sync_fn: Callable | None = None,
    min_class_samples: int = MIN_CLASS_SAMPLES,
) -> Report:
    """Held-out leakage of every attribute of ``schema`` from a stream of chunks, in constant memory.

    ``chunks()`` returns a fresh iterable of ``(embeddings (b, D), identity (b,), labels)``
    each time it is called (2 or 3 times). ``identity``: the identity of every row of the
    whole probe set (all ranks together; order does not matter), from which the folds are
    drawn exactly as :func:`~frx_plugin.leakage.estimate.analyze_embeddings` draws them. Under DDP
    each rank passes its own shard's chunks and ``sync_on_compute=True``; every rank gets the
    report of the whole probe set. ``masked_attributes``: the attributes that may have missing
    labels (default: found by a scan of the label columns, pass 0); naming one without
    missing labels changes nothing but cost. Same report as ``analyze_embeddings`` (same
    folds, heads, reasons, warnings and Poisson replicates); AUROC from ``n_bins`` histogram
    bins per score column. ``dist_sync_fn``: how the metrics' states are gathered across ranks
    (default torchmetrics' own gather; a pass gives :func:`frx_plugin.collectives.metric_sync`).
    ``min_class_samples``: a binary or categorical attribute with a class of fewer labelled samples
    is reported NaN with that reason, as ``analyze_embeddings`` does.

    Devices: the analysis runs on the device of the first chunk's embeddings (every chunk is
    moved there); identities and labels may stay on the CPU. ``report.tensors`` are on the CPU.
    """
    check_identity(identity)
    check_min_class_samples(min_class_samples)
    if not isinstance(n_bootstrap, int) or n_bootstrap < 0:
        raise AnalysisError(f"n_bootstrap must be a non-negative integer, got {n_bootstrap!r}")
    lookup = FoldLookup(identity, n_folds, seed)

    masked_attributes, dim = _masked_attributes(chunks, schema, masked_attributes, sync_on_compute=sync_on_compute, dist_sync_fn=dist_sync_fn)
    shared, masked, dim = _stream_statistics(chunks, schema, lookup, n_folds, list(masked_attributes), dim,
                                             sync_on_compute=sync_on_compute, dist_sync_fn=dist_sync_fn)
    heads = fit_probe_heads(shared, masked, schema)
    warnings = list(heads.warnings)
    n_rows = heads.n_rows
    if n_rows != identity.numel():
        warnings.append(
            f"the stream held {n_rows} rows but the identity vector {identity.numel()}; "
            "rows missing or repeated (e.g. a sampler's padding) change the result"
        )

    leakage_metric = HeldOutLeakage(heads, schema, n_bootstrap, seed, n_bins, sync_on_compute=sync_on_compute, dist_sync_fn=dist_sync_fn)
    for i, chunk in enumerate(chunks()):
        x, ident, labels = _checked(chunk, schema, i, dim)
        leakage_metric.update(x, ident, lookup(ident), labels)
    estimates = leakage_metric.compute()

    unreported: dict[str, float] = {}
    leakage, more = leakage_entries(schema, heads, estimates, min_class_samples, unreported)
    return Report(
        unreported=unreported,
        leakage=leakage,
        n_samples=n_rows,
        n_identities=int(lookup.identities.numel()),
        n_folds=n_folds,
        tensors=probe_tensors(heads),
        warnings=warnings + more,
    )
