"""The paper's two stages: decode embeddings into faces, p(x|z), and read attributes off them, p(a|x).

Recovery significance, with decoder G and estimator E::

    R_k = 1 − err_k(a, E(G(z))) / err_k(a, E(G(z_π)))

π pairs each face with a face of another identity from the same identity-disjoint fold, so both
are decoded by the decoder that never saw their fold. err is 1 − accuracy for discrete kinds and
the mean absolute error for continuous ones, averaged over the decoder's samples of each z. The
same formula with the direct probe heads h in place of E∘G gives the direct-path value, on the
same folds and pairs. R_k of E on the real faces (``real_images``) is the ceiling of what the
estimator can read at all; an attribute it cannot read from real faces (``readable`` false) says
nothing about the representation.

The **spread** of an attribute is how much E's readings differ between samples of the same z:
for discrete kinds the share of samples that disagree with the most common reading, for
continuous ones the standard deviation across samples over the standard deviation of the labels.

One pass trains one decoder per fold on the other folds' faces (warm-started from the previous
pass's weights), decodes its held-out fold ``samples`` times, and reads every decoded face with
E. :class:`TwoStage` holds that state; :meth:`TwoStage.run_fold` does one fold (under DDP each
process takes its own folds), :meth:`TwoStage.measures` turns the assembled readings into the
report's ``recovery`` entry.

The runner's names (``TwoStage``, ``TwoStageConfig``, ``FoldResult``, ``run_two_stage``) are loaded on
first use, so that importing a module of this package (the decoders, which the built-in plugin
registers) does not import the runner and, through it, the plugin registries.
"""

from __future__ import annotations

from frx_plugin.lazy import lazy_names
from frx_plugin.two_stage.measures import (
    READABLE_MIN,
    direct_readings,
    genuine_mean_cosine,
    reading_errors,
    recovery_scalars,
    recovery_significance,
    sample_spread,
    spearman,
    within_fold_pairs,
)

#: Public names of the runner, imported on first access.
_LAZY = {"FoldResult": "runner", "TwoStage": "runner", "TwoStageConfig": "runner", "run_two_stage": "runner"}

__all__ = [
    "READABLE_MIN", "FoldResult", "TwoStage", "TwoStageConfig", "direct_readings", "genuine_mean_cosine", "reading_errors",
    "recovery_scalars", "recovery_significance", "run_two_stage", "sample_spread", "spearman", "within_fold_pairs",
]


__getattr__, __dir__ = lazy_names(__name__, _LAZY)
