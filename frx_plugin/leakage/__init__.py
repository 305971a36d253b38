"""Attribute leakage of face embeddings: how well held-out linear probes recover each attribute.

Heads are fitted on identity-disjoint folds (every identity on one side of each split) from
per-fold sufficient statistics; each labelled sample is scored by the head that did not see its
identity, and the metrics are pooled over the held-out folds: AUROC and balanced accuracy for
binary and categorical attributes, R² for continuous ones, with percentile 95% intervals from a
Poisson bootstrap over identities. The leakage is ℓ = max(0, 2·AUROC − 1), or max(0, R²).

``analyze_embeddings`` runs the whole analysis in memory, ``analyze_stream`` the same in constant
memory over a re-iterable stream of chunks (also under DDP). The modules: ``functional`` (metric
functions on tensors), ``statistics`` (folds, sufficient statistics, targets), ``ridge`` (ridge
heads), ``penalty`` (how the ridge heads' penalties are chosen on held-out identities), ``logistic``
(exact logistic heads), ``metrics`` (the torchmetrics metrics of both passes), ``estimate``
(``analyze_embeddings``) and ``streaming`` (``analyze_stream``).

The names that need torchmetrics (``ProbeStatistics``, ``HeldOutLeakage``, ``analyze_stream``,
``FoldLookup``, ``DEFAULT_BINS``) are loaded on first use, so importing this package does not
import torchmetrics.
"""

from __future__ import annotations

from frx_plugin.lazy import lazy_names
from frx_plugin.leakage.estimate import HEADS, analyze_embeddings, leakage_entries, probe_tensors
from frx_plugin.leakage.functional import (
    MetricEstimate,
    auroc,
    auroc_columns,
    balanced_accuracy,
    bootstrap_estimate,
    histogram_auroc,
    histogram_auroc_tie_bound,
    normalised_leakage,
    r2_score,
)
from frx_plugin.leakage.logistic import LogisticHeads, fit_logistic_heads
from frx_plugin.leakage.ridge import ProbeHeads, fit_probe_heads, fit_ridge_heads
from frx_plugin.leakage.statistics import FoldStatistics, Target, build_targets, fold_statistics, identity_folds, score_rows

#: Public names of the torchmetrics-based modules, imported on first access.
_LAZY = {
    "ProbeStatistics": "metrics",
    "HeldOutLeakage": "metrics",
    "DEFAULT_BINS": "metrics",
    "analyze_stream": "streaming",
    "FoldLookup": "streaming",
}

__all__ = [
    "analyze_embeddings",
    "analyze_stream",
    "HEADS",
    "identity_folds",
    "auroc",
    "auroc_columns",
    "balanced_accuracy",
    "r2_score",
    "histogram_auroc",
    "histogram_auroc_tie_bound",
    "normalised_leakage",
    "MetricEstimate",
    "bootstrap_estimate",
    "FoldStatistics",
    "fold_statistics",
    "Target",
    "build_targets",
    "score_rows",
    "ProbeHeads",
    "fit_probe_heads",
    "fit_ridge_heads",
    "LogisticHeads",
    "fit_logistic_heads",
    "ProbeStatistics",
    "HeldOutLeakage",
    "DEFAULT_BINS",
    "FoldLookup",
    "leakage_entries",
    "probe_tensors",
]


__getattr__, __dir__ = lazy_names(__name__, _LAZY)
