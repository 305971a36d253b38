"""Per-fold sufficient statistics of the leakage analysis, and the targets they are taken of.

``identity_folds``   identity-disjoint folds (every identity on one side of each split)
``fold_statistics``  per-fold sufficient statistics XᵀX, XᵀY, Σx, Σy, Σy², n (:class:`FoldStatistics`);
                     a training set's statistics are total − fold
``build_targets``    the target matrix: a binary attribute is one 0/1 column, a categorical one
                     with C classes C one-hot columns, a continuous one its value
``score_rows``       every row scored by the head of its fold (float64)
``undefined_reason`` why an attribute's leakage is undefined, from the statistics alone

and the input checks every pass shares (``check_embeddings``, ``check_identity``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from frx_plugin.attributes import Attribute, AttributeSchema
from frx_plugin.errors import AnalysisError

__all__ = [
    "identity_folds",
    "FoldStatistics",
    "fold_statistics",
    "score_rows",
    "Target",
    "build_targets",
    "target_layout",
    "undefined_reason",
    "unseen_class_warnings",
    "MIN_CLASS_SAMPLES",
    "check_min_class_samples",
    "too_few_samples",
    "class_name",
    "check_embeddings",
    "check_identity",
    "identity_index",
    "work_dtype",
]


# --------------------------------------------------------------------------- input checks


def work_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 for float64 embeddings, float32 for every other floating dtype."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def check_embeddings(embeddings: torch.Tensor) -> torch.Tensor:
    """``embeddings`` (N, D) on their own device in the working precision (float64 stays, other floats become float32).

    Raises :class:`AnalysisError` for a non-tensor, a shape other than (N, D ≥ 1), an integer
    dtype, or rows holding NaN, infinity or values too large to sum.
    """
    if not isinstance(embeddings, torch.Tensor):
        raise AnalysisError(f"embeddings must be a tensor, got {type(embeddings).__name__}")
    if embeddings.ndim != 2:
        raise AnalysisError(f"embeddings must be 2-D (N, D), got shape {tuple(embeddings.shape)}")
    if not embeddings.dtype.is_floating_point:
        raise AnalysisError(f"embeddings must be floating point, got {embeddings.dtype}")
    n, d = embeddings.shape
    if d == 0:
        raise AnalysisError("embeddings have 0 columns (D = 0)")
    x = embeddings.detach()
    x = x.to(work_dtype(x))
    if not bool(torch.isfinite(x.sum(1)).all()):  # cheap screen: a NaN/inf makes its row sum NaN/inf
        k = int((~torch.isfinite(x).all(1)).sum())
        if k:
            raise AnalysisError(f"embeddings contain NaN or infinity in {k} of {n} rows — did the training diverge?")
        raise AnalysisError(
            f"embeddings hold values too large to sum in {x.dtype} (largest |value| {float(x.abs().max()):.3g}); "
            "rescale them (e.g. L2-normalise)"
        )
    return x


def identity_index(identity: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Identities as 0..K-1 (sorted by label) and K."""
    uniq, index = torch.unique(identity, return_inverse=True)
    return index, int(uniq.numel())


def check_identity(identity: torch.Tensor, n: int | None = None) -> None:
    """Raise :class:`AnalysisError` unless ``identity`` is a 1-D integer tensor (of ``n`` entries, if given)."""
    if not isinstance(identity, torch.Tensor) or identity.ndim != 1:
        shape = tuple(identity.shape) if isinstance(identity, torch.Tensor) else type(identity).__name__
        raise AnalysisError(f"identity must be a 1-D integer tensor, got {shape}")
    if identity.dtype.is_floating_point or identity.dtype.is_complex or identity.dtype == torch.bool:
        raise AnalysisError(f"identity must be an integer tensor, got {identity.dtype}")
    if n is not None and identity.shape[0] != n:
        raise AnalysisError(f"identity has {identity.shape[0]} entries but embeddings have {n} rows")


def identity_folds(identity: torch.Tensor, n_folds: int, seed: int = 0) -> torch.Tensor:
    """Fold id (0..n_folds-1, int64) of every sample, identity-disjoint and balanced by sample count.

    Identities are shuffled with ``seed``, ordered by sample count (largest first, the
    shuffle breaking ties) and each is put into the fold that holds the fewest samples so
    far (greedy). With equal-sized identities this is a seeded round-robin. Drawn on the CPU (a
    seeded host generator and a greedy loop), and returned there.
    """
    check_identity(identity)
    identity = identity.detach().cpu()
    if not isinstance(n_folds, int) or isinstance(n_folds, bool) or n_folds < 2:
        raise AnalysisError(f"n_folds must be an integer of at least 2, got {n_folds!r}")
    n = int(identity.shape[0])
    if n < n_folds:
        raise AnalysisError(f"{n} samples are fewer than n_folds={n_folds}; every fold needs at least one sample")
    index, k = identity_index(identity)
    if k < 2:
        raise AnalysisError(f"identity: only {k} identity in {n} samples; identity-disjoint folds need at least 2 identities")
    if k < n_folds:
        raise AnalysisError(
            f"identity: {k} identities are fewer than n_folds={n_folds}; every fold needs its own identities"
        )
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    counts = torch.bincount(index, minlength=k)
    shuffled = torch.randperm(k, generator=generator, device="cpu")
    order = shuffled[torch.argsort(counts[shuffled], descending=True, stable=True)]
    fold_of_identity = torch.empty(k, dtype=torch.int64, device="cpu")
    if bool((counts == counts[0]).all()):  # equal sizes: the greedy rule is a round-robin
        fold_of_identity[order] = torch.arange(k, device="cpu") % n_folds
        return fold_of_identity[index]
    loads = [0] * n_folds
    for ident, count in zip(order.tolist(), counts[order].tolist()):
        fold = min(range(n_folds), key=loads.__getitem__)
        fold_of_identity[ident] = fold
        loads[fold] += count
    return fold_of_identity[index]


# --------------------------------------------------------------------------- sufficient statistics


@dataclass
class FoldStatistics:
    """Sufficient statistics of ridge heads, one slice per fold (or per training set).

    Shapes: ``count`` (F,), ``sum_x`` (F, D), ``gram`` (F, D, D) = XᵀX, ``sum_y`` (F, T),
    ``cross`` (F, D, T) = XᵀY, ``sum_yy`` (F, T). All float64. Sums over folds and
    differences between sets are plain tensor arithmetic, and a distributed version
    all-reduces these tensors.
    """

    count: torch.Tensor
    sum_x: torch.Tensor
    gram: torch.Tensor
    sum_y: torch.Tensor
    cross: torch.Tensor
    sum_yy: torch.Tensor

    def columns(self, cols: torch.Tensor) -> FoldStatistics:
        return FoldStatistics(self.count, self.sum_x, self.gram, self.sum_y[:, cols], self.cross[:, :, cols], self.sum_yy[:, cols])

    def training_sets(self) -> FoldStatistics:
        """Statistics of the F training sets (total − fold f), then of all data: F + 1 slices."""

        def train(t: torch.Tensor) -> torch.Tensor:
            total = t.sum(0, keepdim=True)
            return torch.cat([total - t, total])

        return FoldStatistics(*(train(t) for t in self.tensors()))

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The six tensors in field order: count, sum_x, gram, sum_y, cross, sum_yy."""
        return (self.count, self.sum_x, self.gram, self.sum_y, self.cross, self.sum_yy)


#: Rows per block when statistics are accumulated (bounds the float64 copy of a block).
GRAM_BLOCK_ROWS = 4096


#: Column panels of the symmetric product XᵀX (only panels on and above the diagonal are multiplied).
_GRAM_PANELS = 4


def _add_gram(out: torch.Tensor, x: torch.Tensor) -> None:
    """``out += xᵀx``, multiplying only the panels on and above the diagonal (~⅝ of the work)."""
    d = x.shape[1]
    if d < 128:
        out += x.T @ x
        return
    edges = [d * i // _GRAM_PANELS for i in range(_GRAM_PANELS + 1)]
    for a, b in zip(edges[:-1], edges[1:]):
        block = x[:, a:b].T @ x[:, a:]  # rows a:b, columns a:
        out[a:b, a:] += block
        if b < d:
            out[b:, a:b] += block[:, b - a :].T


def fold_statistics(x: torch.Tensor, y: torch.Tensor, folds: torch.Tensor, n_folds: int) -> FoldStatistics:
    """Per-fold statistics of rows ``x`` (N, D) and targets ``y`` (N, T), float64 on the device of ``x``.

    Products and sums are float64 throughout (each block of at most ``GRAM_BLOCK_ROWS`` rows of
    one fold is converted on its own), so the statistics do not depend on how the rows are
    batched or sharded beyond float64 rounding: the 1e-6 agreement of a DDP pass with a
    single-process one rests on this.
    """
    f64, device = torch.float64, x.device
    d, t = x.shape[1], y.shape[1]
    count = torch.zeros(n_folds, dtype=f64, device=device)
    sum_x = torch.zeros(n_folds, d, dtype=f64, device=device)
    gram = torch.zeros(n_folds, d, d, dtype=f64, device=device)
    sum_y = torch.zeros(n_folds, t, dtype=f64, device=device)
    cross = torch.zeros(n_folds, d, t, dtype=f64, device=device)
    sum_yy = torch.zeros(n_folds, t, dtype=f64, device=device)
    y, folds = y.to(device), folds.to(device).long()
    sizes = torch.bincount(folds, minlength=n_folds).tolist()
    if len(sizes) > n_folds:
        raise ValueError(f"fold ids must be below n_folds={n_folds}, got {len(sizes) - 1}")
    order = None if bool((folds[1:] >= folds[:-1]).all()) else torch.argsort(folds, stable=True)
    start = 0
    for f, size in enumerate(sizes):
        for begin in range(start, start + size, GRAM_BLOCK_ROWS):
            end = min(begin + GRAM_BLOCK_ROWS, start + size)
            rows = slice(begin, end) if order is None else order[begin:end]
            xb, yb = x[rows].to(f64), y[rows].to(f64)
            count[f] += end - begin
            sum_x[f] += xb.sum(0)
            _add_gram(gram[f], xb)
            sum_y[f] += yb.sum(0)
            cross[f] += xb.T @ yb
            sum_yy[f] += (yb * yb).sum(0)
        start += size
    return FoldStatistics(count, sum_x, gram, sum_y, cross, sum_yy)


def score_rows(x: torch.Tensor, folds: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(N, T) float64 scores on the device of ``x``: row i scored by head ``folds[i]`` (``weight`` (S, D, T), ``bias`` (S, T)).

    In float64 (a float32 product rounds each score differently with the batch shape, which
    would make results depend on chunking); every pass scores through this function.
    """
    scores = torch.empty(x.shape[0], weight.shape[2], dtype=torch.float64, device=x.device)
    folds = folds.to(x.device).long()
    if bool((folds[1:] >= folds[:-1]).all()):  # grouped by fold: slices, no gathers
        start = 0
        for f, size in enumerate(torch.bincount(folds).tolist()):
            if size:
                scores[start : start + size] = x[start : start + size].to(torch.float64) @ weight[f] + bias[f]
            start += size
        return scores
    for f in torch.unique(folds).tolist():
        rows = (folds == f).nonzero().squeeze(1)
        scores[rows] = x[rows].to(torch.float64) @ weight[f] + bias[f]
    return scores


# --------------------------------------------------------------------------- targets


@dataclass
class Target:
    """Where an attribute's columns sit in the target matrix, and what can be computed for it."""

    attribute: Attribute
    cols: torch.Tensor  # column indices into Y, on the CPU (a layout, not data)
    labelled: torch.Tensor  # (N,) bool, on the labels' device
    reason: str | None = None


def build_targets(labels: Mapping[str, torch.Tensor], schema: AttributeSchema, n: int) -> tuple[torch.Tensor, list[Target]]:
    """The (N, T) float64 target matrix of ``labels`` (N rows each) and where each attribute's columns sit.

    A binary attribute is one 0/1 column, a categorical one with C classes C one-hot columns,
    a continuous one its value; unlabelled rows (-1, NaN) are 0 in every column of their attribute.
    The matrix lies on the device of the labels; each :attr:`Target.cols` on the CPU.
    """
    columns: list[torch.Tensor] = []
    targets: list[Target] = []
    start = 0
    for attribute in schema:
        raw = labels[attribute.name]
        labelled = ~attribute.missing_mask(raw)
        if attribute.kind == "binary":
            block = (raw == 1).to(torch.float64)[:, None]
        elif attribute.kind == "categorical":
            block = torch.nn.functional.one_hot(raw.long().clamp_min(0), attribute.num_classes).to(torch.float64)
            block = block * labelled[:, None].to(torch.float64)
        else:
            block = torch.where(labelled, raw.to(torch.float64), torch.zeros((), dtype=torch.float64, device=raw.device))[:, None]
        columns.append(block)
        targets.append(Target(attribute, torch.arange(start, start + block.shape[1], device="cpu"), labelled))
        start += block.shape[1]
    y = torch.cat(columns, 1) if columns else torch.zeros(n, 0, dtype=torch.float64, device="cpu")
    return y, targets


def target_layout(schema: AttributeSchema) -> list[Target]:
    """Where each attribute's target columns sit (no rows): the column layout of :func:`build_targets`."""
    _, targets = build_targets({a.name: _empty_labels(a) for a in schema}, schema, 0)
    return targets


def _empty_labels(attribute: Attribute) -> torch.Tensor:
    return torch.zeros(0, dtype=torch.int64 if attribute.discrete else torch.float32, device="cpu")


def class_name(attribute: Attribute, index: int) -> str:
    """The name of class ``index`` of a discrete attribute (its index as text when it has no class names)."""
    return attribute.classes[index] if attribute.classes else str(index)


def undefined_reason(attribute: Attribute, per_fold: FoldStatistics, train: FoldStatistics, held_out_folds: list[int], n_rows: int) -> str | None:
    """Why this attribute's leakage is undefined (None if it is defined), from statistics alone.

    ``per_fold`` / ``train``: per-fold (F slices) and training-set (F + 1 slices) statistics of
    this attribute's labelled rows and target columns. Class counts are Σy of the 0/1 columns;
    a continuous attribute's variance is Σy²/n − (Σy/n)², called constant below 10⁻¹² of Σy²/n
    (the same rule as for each training part). ``n_rows``: all rows of the probe set.
    """
    n_labelled = int(round(float(per_fold.count.sum())))
    if n_labelled == 0:
        return f"no labelled samples (all {n_rows} labels missing); {'AUROC' if attribute.discrete else 'R²'} undefined"
    totals = per_fold.sum_y.sum(0)
    if attribute.discrete:
        counts = [n_labelled - float(totals[0]), float(totals[0])] if attribute.kind == "binary" else totals.tolist()
        present = [c for c, k in enumerate(counts) if k > 0.5]
        if len(present) < 2:
            return f"only one class ({class_name(attribute, present[0])!r}) among labelled samples; AUROC undefined"
        n_train = train.count
        for f in held_out_folds:
            if attribute.kind == "binary":
                n1 = float(train.sum_y[f, 0])
                counts = [float(n_train[f]) - n1, n1]
            else:
                counts = train.sum_y[f].tolist()
            seen = [c for c, k in enumerate(counts) if k > 0.5]
            if len(seen) < 2:
                only = f"only one class ({class_name(attribute, seen[0])!r})" if seen else "no labelled samples"
                return f"the training part of fold {f} has {only}; its head and the held-out AUROC are undefined"
        return None
    if n_labelled < 3:
        return f"only {n_labelled} labelled samples; R² undefined"
    mean = float(totals[0]) / n_labelled
    mean_square = float(per_fold.sum_yy.sum(0)[0]) / n_labelled
    if mean_square - mean**2 <= 1e-12 * max(1.0, mean_square):
        return f"all labelled values are equal ({mean:g}); R² undefined"
    for f in held_out_folds:
        n_f = float(train.count[f])
        if n_f < 2:
            return f"the training part of fold {f} has {int(n_f)} labelled samples; its head and the held-out R² are undefined"
        col = 0
        var = float(train.sum_yy[f, col]) / n_f - (float(train.sum_y[f, col]) / n_f) ** 2
        if var <= 1e-12 * max(1.0, float(train.sum_yy[f, col]) / n_f):
            return f"the training part of fold {f} has constant labels; its head and the held-out R² are undefined"
    return None


#: Default of ``min_class_samples``: a discrete attribute with a class of fewer labelled samples gets no AUROC.
MIN_CLASS_SAMPLES = 20


def check_min_class_samples(value: object) -> int:
    """``min_class_samples`` checked: a non-negative integer (0 or 1: every present class is enough)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise AnalysisError(f"min_class_samples must be a non-negative integer, got {value!r}")
    return value


def too_few_samples(attribute: Attribute, counts: list[int] | None, min_class_samples: int) -> str | None:
    """Why a discrete attribute's AUROC is not reported (its smallest present class has fewer than
    ``min_class_samples`` labelled samples), or ``None``. Absent classes are left to the macro average."""
    if not attribute.discrete or not counts:
        return None
    present = [(k, c) for c, k in enumerate(counts) if k > 0]
    if not present:
        return None
    smallest, c = min(present)
    if smallest >= min_class_samples:
        return None
    return f"too few samples of class {class_name(attribute, c)!r} ({smallest} < {min_class_samples}) for a stable AUROC"


def unseen_class_warnings(attribute: Attribute, train_counts: torch.Tensor, folds_with_data: list[int]) -> list[str]:
    """Classes whose held-out samples of a fold are scored by a head that never saw the class.

    ``train_counts`` (F + 1, C): class counts of the F training sets, then of all data.
    """
    out = []
    counts = train_counts.tolist()  # one transfer, not one per class and fold
    total = counts[-1]
    for f in folds_with_data:
        unseen = [c for c in range(attribute.num_classes) if counts[f][c] < 0.5 < total[c]]
        if unseen:
            names = ", ".join(repr(class_name(attribute, c)) for c in unseen)
            out.append(
                f"attribute {attribute.name!r}: class(es) {names} occur only in fold {f}; "
                "their held-out scores there come from a head that never saw them"
            )
    return out
