"""Stage 2 for any labelled probe set: an estimator trained on the probe set's own real faces, fold by fold.

The paper's estimator E reads attributes off faces. For a probe set no plugin reads (an image
folder with a CSV, CelebA with its 40 attributes), :func:`train_probe_estimator` trains one on the
probe set's own labelled images, on the identity-disjoint folds of the decoders: the heads of fold
``f`` are trained on the faces of the other folds, and read fold ``f``'s faces (its decoded ones,
and its real ones for the ceiling), so no face is read by heads that saw its identity.

Its form: ridge heads (one per attribute: one-hot targets for discrete kinds, the value for
continuous ones) on fixed image features (:func:`frx_plugin.two_stage.features.image_features`:
a colour thumbnail, histograms of gradient orientations, chromaticity). The penalty of each attribute is
chosen on held-out identities by inner identity folds within the training folds. Why this form:
it is exact and deterministic (a closed-form solve, no epochs or early stopping to tune), it holds
up at a few hundred faces where a CNN trained from scratch overfits, its cost grows linearly in the
faces (the scatter of ~1 350 features) on a CPU or a GPU, and it uses no recognition model — the
face model being analysed must not read its own decoded faces.

What it reports: ``accuracy`` (per attribute, held-out, pooled over the folds), ``ceiling`` (R_k of
its held-out readings of the real faces, paired as the two-stage path pairs them) and ``readable``
(ceiling above :data:`frx_plugin.two_stage.measures.READABLE_MIN`); ``penalties`` per fold. Cached
in ``cache_dir()/estimators/probe-<key>.safetensors``, the key a digest of the probe set (its
source, schema, identities, labels and a few images), the folds and the feature version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from frx_plugin.attributes import AttributeSchema
from frx_plugin.cache import cache_dir
from frx_plugin.errors import EstimatorError
from frx_plugin.leakage import identity_folds
from frx_plugin.two_stage.features import FEATURES_VERSION, PENALTY_GRID, fit_ridge, image_features, ridge_path_predictions
from frx_plugin.two_stage.measures import READABLE_MIN, recovery_significance, within_fold_pairs

__all__ = ["PROBE_ESTIMATOR_FORMAT", "ProbeTrainedEstimator", "load_or_train_probe_estimator", "probe_estimator_path",
           "probe_features", "train_probe_estimator", "trained_estimator"]

_log = logging.getLogger(__name__)

PROBE_ESTIMATOR_FORMAT = "frx.probe-estimator/2"
_METADATA = "frx.estimator"
_INNER_FOLDS = 3


class ProbeTrainedEstimator:
    """Ridge heads on image features, one set per identity-disjoint fold of a probe set.

    ``estimate_fold(images, f)`` reads with the heads trained without fold ``f``'s identities;
    ``estimate(images)`` averages the folds' outputs (for faces of no fold). See the module for
    ``accuracy``, ``ceiling``, ``readable`` and ``penalties``.
    """

    def __init__(self, schema: AttributeSchema, input_shape: Sequence[int], folds: torch.Tensor, weights: Sequence[torch.Tensor],
                 biases: Sequence[torch.Tensor], accuracy: Mapping[str, Mapping[str, float]], ceiling: Mapping[str, float],
                 penalties: Mapping[str, Mapping[str, float]], source: str = "probe set",
                 ranges: Mapping[str, Sequence[float]] | None = None) -> None:
        self.schema = schema
        self.attributes: tuple[str, ...] = tuple(schema.names)
        self.input_shape: tuple[int, int, int] = tuple(int(v) for v in input_shape)  # type: ignore[assignment]
        self.folds = folds
        self.weights, self.biases = list(weights), list(biases)
        self.accuracy = {k: dict(v) for k, v in accuracy.items()}
        self.ceiling = {k: float(v) for k, v in ceiling.items()}
        self.readable = {k: bool(v > READABLE_MIN) for k, v in self.ceiling.items()}
        self.penalties = {k: dict(v) for k, v in penalties.items()}
        self.source = source
        self.path = f"trained on {source}"
        #: the labelled values of each continuous attribute, (lowest, highest): a reading stays within what it was trained on
        self.ranges = {k: (float(v[0]), float(v[1])) for k, v in (ranges or {}).items()}

    def __repr__(self) -> str:
        return f"ProbeTrainedEstimator({self.source!r}, folds={len(self.weights)}, attributes={list(self.attributes)})"

    def only(self, names: Sequence[str]) -> ProbeTrainedEstimator:
        """The same heads, reading only ``names`` (the attributes no other estimator reads)."""
        schema = AttributeSchema(a for a in self.schema if a.name in set(names))
        keep = torch.cat([torch.arange(*_columns(self.schema)[a.name]) for a in schema]) if len(schema) else torch.zeros(0, dtype=torch.long)
        return ProbeTrainedEstimator(schema, self.input_shape, self.folds, [w[:, keep] for w in self.weights], [b[keep] for b in self.biases],
                                     {k: v for k, v in self.accuracy.items() if k in schema}, {k: v for k, v in self.ceiling.items() if k in schema},
                                     {f: {k: v for k, v in p.items() if k in schema} for f, p in self.penalties.items()}, self.source,
                                     {k: v for k, v in self.ranges.items() if k in schema})

    def _check(self, images: Any) -> None:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or tuple(images.shape[1:]) != self.input_shape:
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise EstimatorError(f"the estimator trained on {self.source} takes images (B, C, H, W) with (C, H, W) = {self.input_shape}, got {got}")

    def outputs(self, features: torch.Tensor, fold: int | None = None) -> torch.Tensor:
        """Raw head outputs (B, columns) of ``features``: fold ``fold``'s heads, or the mean over the folds."""
        x = features.to(torch.float64)
        heads = list(zip(self.weights, self.biases))
        if fold is not None:
            if not 0 <= int(fold) < len(heads):
                raise EstimatorError(f"the estimator trained on {self.source} has folds 0..{len(heads) - 1}, not {fold}")
            heads = [heads[int(fold)]]
        return torch.stack([x @ w.to(x.device) + b.to(x.device) for w, b in heads]).mean(0)

    def estimate_fold(self, images: torch.Tensor, fold: int | None) -> dict[str, torch.Tensor]:
        """``{name: (B,)}`` readings by fold ``fold``'s heads (int64 classes, float32 values), on the images' device."""
        self._check(images)
        return decode_outputs(self.schema, self.outputs(image_features(images), fold), self.ranges)

    def estimate(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.estimate_fold(images, None)


def _columns(schema: AttributeSchema) -> dict[str, tuple[int, int]]:
    """Each attribute's output columns (start, stop): one per class, or one for a continuous kind."""
    out, start = {}, 0
    for a in schema:
        width = a.num_classes if a.discrete else 1
        out[a.name] = (start, start + width)
        start += width
    return out


def decode_outputs(schema: AttributeSchema, outputs: torch.Tensor,
                   ranges: Mapping[str, tuple[float, float]] | None = None) -> dict[str, torch.Tensor]:
    """Head outputs → readings: the class of the largest output, or the value, within ``ranges`` (a linear head
    extrapolates without bound on a face unlike its training faces: it reads no value it was not trained on)."""
    out = {}
    for a in schema:
        start, stop = _columns(schema)[a.name]
        part = outputs[:, start:stop]
        if a.discrete:
            out[a.name] = part.argmax(1).to(torch.int64)
            continue
        value = part[:, 0]
        if ranges and a.name in ranges:
            value = value.clamp(*ranges[a.name])
        out[a.name] = value.to(torch.float32)
    return out


def label_ranges(schema: AttributeSchema, labels: Mapping[str, torch.Tensor]) -> dict[str, tuple[float, float]]:
    """(lowest, highest) labelled value of each continuous attribute that has labels."""
    out = {}
    for a in schema:
        y = labels[a.name].reshape(-1)
        y = y[~a.missing_mask(y)]
        if not a.discrete and y.numel():
            out[a.name] = (float(y.min()), float(y.max()))
    return out


def _targets(schema: AttributeSchema, labels: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Target columns (N, columns) float64 and each attribute's labelled rows (N,) bool."""
    parts, labelled = [], {}
    for a in schema:
        y = labels[a.name].reshape(-1)
        known = ~a.missing_mask(y)
        labelled[a.name] = known
        if a.discrete:
            parts.append(torch.nn.functional.one_hot(torch.where(known, y.long(), 0), a.num_classes).to(torch.float64))
        else:
            parts.append(torch.nan_to_num(y.to(torch.float64))[:, None])
    return torch.cat(parts, 1), labelled


def probe_features(probe: Any, batch_size: int = 128) -> torch.Tensor:
    """(N, D) :func:`image_features` of every face of ``probe``, in order."""
    return torch.cat([image_features(x) for _, x in probe.batches(torch.arange(len(probe)), batch_size)])


def _choose_penalty(x: torch.Tensor, y: torch.Tensor, identity: torch.Tensor, seed: int) -> torch.Tensor:
    """Per target column, the penalty of :data:`PENALTY_GRID` (× rows) with the least held-out squared error
    over inner identity folds of these rows (summed over an attribute's columns by the caller)."""
    grid = torch.tensor(PENALTY_GRID, dtype=torch.float64)
    n_ids = int(torch.unique(identity).numel())
    if n_ids < 2:
        return torch.full((1, y.shape[1]), math.nan, dtype=torch.float64).expand(len(grid), -1).clone()
    inner = identity_folds(identity, min(_INNER_FOLDS, n_ids), seed)
    sse = torch.zeros(len(grid), y.shape[1], dtype=torch.float64)
    for j in torch.unique(inner).tolist():
        test, train = inner == j, inner != j
        predicted = ridge_path_predictions(x[train], y[train], x[test], grid * int(train.sum()))
        sse += ((predicted - y[test].to(torch.float64)) ** 2).sum(1)
    return sse


def _fit_fold(features: torch.Tensor, targets: torch.Tensor, labelled: Mapping[str, torch.Tensor], schema: AttributeSchema,
              identity: torch.Tensor, train: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """One fold's weights (D, columns), biases and penalties, trained on the rows ``train``; attributes with the same
    labelled rows share one solve."""
    columns = _columns(schema)
    weight = torch.zeros(features.shape[1], targets.shape[1], dtype=torch.float64)
    bias = torch.zeros(targets.shape[1], dtype=torch.float64)
    penalties: dict[str, float] = {}
    groups: dict[bytes, list[str]] = {}
    for a in schema:
        groups.setdefault((train & labelled[a.name]).numpy().tobytes(), []).append(a.name)
    for names in groups.values():
        rows = train & labelled[names[0]]
        if int(rows.sum()) < 2:
            continue  # nothing to learn from: outputs stay 0 (class 0, value 0)
        cols = torch.cat([torch.arange(*columns[name]) for name in names])
        x, y = features[rows], targets[rows][:, cols]
        sse = _choose_penalty(x, y, identity[rows], seed)
        grid = torch.tensor(PENALTY_GRID, dtype=torch.float64) * x.shape[0]
        per_column = torch.empty(len(cols), dtype=torch.float64)
        offset = 0
        for name in names:
            width = columns[name][1] - columns[name][0]
            score = sse[:, offset : offset + width].sum(1)
            best = grid[int(torch.nan_to_num(score, nan=0.0).argmin())] if bool(torch.isfinite(score).all()) else grid[len(grid) // 2]
            per_column[offset : offset + width] = best
            penalties[name] = float(best)
            offset += width
        w, b = fit_ridge(x, y, per_column)
        weight[:, cols], bias[cols] = w, b
    return weight, bias, penalties


def train_probe_estimator(probe: Any, folds: torch.Tensor, seed: int = 0, batch_size: int = 128,
                          say: Callable[[str], Any] | None = None, features: torch.Tensor | None = None) -> ProbeTrainedEstimator:
    """Ridge heads per fold of ``folds`` (N,) on ``probe``'s labelled faces; see the module. Deterministic in its arguments."""
    from frx_plugin.synthetic.estimator import attribute_accuracy

    schema, identity = probe.schema, probe.identity
    folds = torch.as_tensor(folds, dtype=torch.int64)
    if folds.shape != identity.shape:
        raise EstimatorError(f"trained estimator: {folds.numel()} fold entries for {identity.numel()} faces of {probe.source}")
    say = say or (lambda line: None)
    if features is None:
        features = probe_features(probe, batch_size)
    say(f"trained estimator: {features.shape[1]} features of {features.shape[0]} faces of {probe.source}")
    targets, labelled = _targets(schema, probe.labels)
    n_folds = int(folds.max()) + 1
    weights, biases, penalties = [], [], {}
    outputs = torch.zeros(targets.shape, dtype=torch.float64)
    for f in range(n_folds):
        w, b, p = _fit_fold(features.to(torch.float64), targets, labelled, schema, identity, folds != f, seed * 7_919 + f)
        weights.append(w)
        biases.append(b)
        penalties[str(f)] = p
        outputs[folds == f] = features[folds == f].to(torch.float64) @ w + b
    ranges = label_ranges(schema, probe.labels)
    predicted = decode_outputs(schema, outputs, ranges)
    accuracy = attribute_accuracy(schema, predicted, probe.labels)
    pairs = within_fold_pairs(identity, folds, seed)
    has_pair, partner = pairs >= 0, pairs.clamp_min(0)
    ceiling = {}
    for a in schema:
        target = torch.where(has_pair, probe.labels[a.name], torch.full_like(probe.labels[a.name], -1 if a.discrete else math.nan))
        ceiling[a.name] = float(recovery_significance(a, target, predicted[a.name], predicted[a.name][partner]))
    shape = tuple(int(v) for v in probe.images(torch.arange(1)).shape[1:])
    estimator = ProbeTrainedEstimator(schema, shape, folds, weights, biases, accuracy, ceiling, penalties, str(probe.source), ranges)
    unreadable = [name for name, ok in estimator.readable.items() if not ok]
    say("trained estimator: ceilings " + ", ".join(f"{k} {v:.2f}" for k, v in ceiling.items())
        + (f"; unreadable: {unreadable}" if unreadable else ""))
    return estimator


# --------------------------------------------------------------------------- cache


def _fingerprint(probe: Any, folds: torch.Tensor, seed: int) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({"format": PROBE_ESTIMATOR_FORMAT, "features": FEATURES_VERSION, "grid": [str(v) for v in PENALTY_GRID], "seed": seed,
                              "source": str(probe.source), "schema": probe.schema.to_json()}, sort_keys=True).encode())
    for tensor in (probe.identity, folds, *(probe.labels[name] for name in probe.schema.names)):
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    n = len(probe)
    digest.update(probe.images(torch.tensor(sorted({0, n // 2, n - 1}))).to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def probe_estimator_path(probe: Any, folds: torch.Tensor, seed: int = 0) -> Path:
    """Where :func:`load_or_train_probe_estimator` keeps the estimator of ``probe`` and ``folds``."""
    return cache_dir() / "estimators" / f"probe-{_fingerprint(probe, folds, seed)[:16]}.safetensors"


def _save(estimator: ProbeTrainedEstimator, path: Path, key: str) -> None:
    from safetensors.torch import save_file

    from frx_plugin.history import atomic_write

    tensors = {"folds": estimator.folds.contiguous()}
    for f, (w, b) in enumerate(zip(estimator.weights, estimator.biases)):
        tensors[f"fold{f}.weight"], tensors[f"fold{f}.bias"] = w.contiguous(), b.contiguous()
    description = {"key": key, "schema": estimator.schema.to_json(), "input_shape": list(estimator.input_shape), "source": estimator.source,
                   "accuracy": estimator.accuracy, "ceiling": estimator.ceiling, "penalties": estimator.penalties,
                   "ranges": estimator.ranges}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={_METADATA: json.dumps(description, sort_keys=True)}))


def _load(path: Path, key: str) -> ProbeTrainedEstimator:
    from frx_plugin.history import read_tagged_safetensors

    header, state = read_tagged_safetensors(path, _METADATA, "frx's probe-trained estimator", EstimatorError)
    try:
        d = json.loads(header)
        n_folds = int(state["folds"].max()) + 1
        weights = [state[f"fold{f}.weight"] for f in range(n_folds)]
        biases = [state[f"fold{f}.bias"] for f in range(n_folds)]
        schema = AttributeSchema.from_json(d["schema"])
    except Exception as exc:
        raise EstimatorError(f"{path}: damaged estimator file ({type(exc).__name__}: {exc})") from None
    if d.get("key") != key:
        raise EstimatorError(f"{path}: made for another probe set or other folds")
    return ProbeTrainedEstimator(schema, d["input_shape"], state["folds"], weights, biases, d["accuracy"], d["ceiling"], d["penalties"],
                                 d["source"], d.get("ranges", {}))


def load_or_train_probe_estimator(probe: Any, folds: torch.Tensor, seed: int = 0,
                                  say: Callable[[str], Any] | None = None) -> ProbeTrainedEstimator:
    """The estimator of ``probe`` on ``folds``: loaded from the cache, or trained now and written there (atomically;
    an unwritable cache is a warning). A damaged or mismatching file is retrained, with a warning naming it."""
    key = _fingerprint(probe, folds, seed)
    path = cache_dir() / "estimators" / f"probe-{key[:16]}.safetensors"
    if path.exists():
        try:
            return _load(path, key)
        except EstimatorError as exc:
            warnings.warn(f"cached estimator {path} is unusable and is retrained: {exc}", RuntimeWarning, stacklevel=2)
    estimator = train_probe_estimator(probe, folds, seed, say=say)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _save(estimator, path, key)
    except OSError as exc:
        warnings.warn(f"could not cache the trained estimator at {path}: {exc}", RuntimeWarning, stacklevel=2)
    return estimator


def trained_estimator(probe: Any, n_folds: int = 2, seed: int = 0) -> ProbeTrainedEstimator | None:
    """The estimator factory ``trained``: heads trained on ``probe``'s own labelled faces on its ``n_folds``
    identity-disjoint folds (``seed``: the folds' seed, as the two-stage path's); ``None`` for a probe set with no
    labelled attribute, no images, or fewer identities than folds."""
    schema = getattr(probe, "schema", None)
    if not isinstance(schema, AttributeSchema) or not len(schema) or not hasattr(probe, "images"):
        return None
    if int(torch.unique(probe.identity).numel()) < max(2, n_folds):
        return None
    return load_or_train_probe_estimator(probe, identity_folds(probe.identity, n_folds, seed), seed, say=_log.info)
