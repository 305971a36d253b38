"""Counterfactuals (DESIGN.md §2): identity significance S_k and pair explanations δ_k.

Change one attribute of a face, hold the rest, and see how far the representation and the
identity score move. Two paths give the changed embedding z^(k):

- **exact**: a generator with attribute controls (hook ``frx_register_generators``; the synthetic
  world is one) re-renders the sample with attribute k changed and the model embeds it;
- **latent**: where no generator can render the probe set, z moves along the direction that
  changes the probe head of attribute k by the amount the edit would, while the heads of every
  other attribute stay fixed: W_k v = Δ and W_j v = 0 (j ≠ k), e holding Δ on attribute k's head
  columns. Of all such moves frx takes the expected one under a Gaussian model of the probe
  embeddings (covariance Σ): v = ΣWᵀ(WΣWᵀ)⁻¹e ("conditional", the default), rather than the
  least Euclidean move v = W⁺e ("least_norm"). Head combinations so nearly dependent that
  holding them all fixed would need an unbounded move (singular values below ``LATENT_RTOL`` of
  the largest) are dropped from the constraints. z^(k) = (z + v)/‖z + v‖.
  Δ is calibrated on the probe set: for discrete attributes the difference of the heads' mean
  scores between the classes (all columns of a categorical attribute), for continuous ones the
  slope of the head's score on the label times the change of the label — shrunk by how much of
  the in-sample separation survives on held-out identities (see :func:`latent_model`), so a
  head that fits noise does not move z. On the synthetic world (``benchmarks/groundtruth.py``)
  the latent S_k rank the 19 attributes as the exact ones do with Spearman 0.92 (least-norm
  moves: 0.66; without the held-out calibration: 0.87).

Edits (the same on both paths): a binary attribute flips, a categorical one moves to the next
class, a continuous one moves by one standard deviation of its labelled values in the probe set.

**Identity significance** S_k = mean_i(1 − cos(z_i, z_i^(k))) / mean over impostor pairs
(1 − cos(z_i, z_j)); intervals from the Poisson bootstrap over identities that the leakage
uses (numerator and denominator re-weighted together).

**Pair explanations**, at the threshold τ that the false-match rate sets on the probe set's
impostor pairs (accept when s > τ): for a false non-match (i, j) (genuine, s ≤ τ), δ_k =
cos(z_i, z_j^(k←i)) − s, j taking i's value of attribute k ("align"); the attributes whose
alignment lifts s above τ decide it. For a false match (impostor, s > τ), j's attribute k
moves *away* from i's value (the edit above where they share it; a continuous value one
standard deviation further from i's), and the attributes whose change drops s to τ or below
decide it. Attributes that cannot change the pair (equal values for an "align", different
classes for an "away") have δ_k = 0; missing labels give NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from frx_plugin.attributes import Attribute, AttributeSchema
from frx_plugin.errors import CounterfactualError
from frx_plugin.interfaces import AttributeGenerator, Embedder
from frx_plugin.recovery import MetricEstimate, _estimate

__all__ = [
    "AttributeGenerator",
    "CounterfactualError",
    "edit_values",
    "away_values",
    "LatentModel",
    "latent_model",
    "exact_embedder",
    "identity_significance",
    "PairExplanation",
    "explain_errors",
    "pair_errors",
    "pair_values",
    "error_attribution",
]

#: Singular values of the heads below this fraction of the largest are dropped from the latent solve:
#: combinations of heads so nearly dependent that holding them fixed would take an unbounded move.
LATENT_RTOL = 1e-3



# --------------------------------------------------------------------------- edits


def _scale(attribute: Attribute, labels: torch.Tensor) -> float:
    """One standard deviation of a continuous attribute's labelled values (1.0 if undefined)."""
    values = labels[~attribute.missing_mask(labels)].to(torch.float64)
    sd = float(values.std()) if values.numel() > 1 else math.nan
    return sd if math.isfinite(sd) and sd > 0 else 1.0


def edit_values(attribute: Attribute, current: torch.Tensor, scale: float) -> torch.Tensor:
    """The default edit of each value: flip, next class, or + ``scale`` (one standard deviation)."""
    if attribute.kind == "binary":
        return 1 - current
    if attribute.kind == "categorical":
        return (current + 1) % attribute.num_classes
    return current + scale


def away_values(attribute: Attribute, current: torch.Tensor, reference: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Values of ``current`` moved away from ``reference``, and where that changes anything."""
    if attribute.discrete:
        same = current == reference
        return torch.where(same, edit_values(attribute, current, scale), current), same
    step = torch.where(current >= reference, scale, -scale).to(current.dtype)
    return current + step, torch.ones_like(current, dtype=torch.bool)


# --------------------------------------------------------------------------- the two paths


@dataclass
class LatentModel:
    """The latent path: probe heads, their joint inverse, and per-attribute calibration of Δ.

    ``weight`` (T, D) the heads of the defined attributes' columns, ``cols[name]`` their rows in
    ``weight``; ``solve`` (T, D) maps wanted head changes e to the move v = e·solve (``mode``
    "least_norm": (W⁺)ᵀ, the least Euclidean move; "conditional": the Gaussian conditional mean of
    the move given the head changes, ΣWᵀ(WΣWᵀ)⁻¹ with Σ the probe embeddings' covariance); ``class_means[name]`` (C, width) the mean head
    scores of each class (discrete kinds), ``slope[name]`` the score change per unit of the label
    (continuous kinds).
    """

    weight: torch.Tensor
    solve: torch.Tensor
    cols: dict[str, torch.Tensor]
    class_means: dict[str, torch.Tensor] = field(default_factory=dict)
    slope: dict[str, float] = field(default_factory=dict)
    mode: str = "conditional"

    def move(self, z: torch.Tensor, attribute: str, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """z (m, D) moved so that attribute's head changes as from ``old`` to ``new``; L2-normalised."""
        if attribute not in self.cols:
            raise CounterfactualError(f"attribute {attribute!r} has no probe head for the latent path (undefined leakage)")
        cols = self.cols[attribute]
        if attribute in self.class_means:
            means = self.class_means[attribute]
            delta = means[new.long()] - means[old.long()]  # (m, width)
        else:
            delta = (self.slope[attribute] * (new.to(torch.float64) - old.to(torch.float64)))[:, None]
        e = torch.zeros(z.shape[0], self.weight.shape[0], dtype=torch.float64)
        e[:, cols] = delta
        moved = z.to(torch.float64) + e @ self.solve
        return torch.nn.functional.normalize(moved, dim=1).to(torch.float32)


def latent_model(
    embeddings: torch.Tensor,
    labels: Mapping[str, torch.Tensor],
    schema: AttributeSchema,
    probe_directions: torch.Tensor,
    probe_bias: torch.Tensor,
    mode: str = "conditional",
    held_out: Mapping[str, float] | None = None,
) -> LatentModel:
    """Build the latent path from a report's heads (``report.tensors``) and the probe set it measured.

    ``held_out``: the report's held-out metric per attribute (AUROC or R², ``AttributeLeakage.value``).
    The calibration of Δ (class means of the head scores, slope on the label) is measured on the
    probe set the heads were fitted to, so it overstates what a head that fits noise separates;
    with ``held_out`` it is shrunk by κ = (held-out separation) / (in-sample separation):
    binormal d′ = √2·Φ⁻¹(AUROC) for discrete kinds, the correlation √R² for continuous ones
    (κ = 0 when the held-out value shows no signal).
    """
    from frx_plugin.recovery import auroc_columns, build_targets

    z = embeddings.to(torch.float64)
    _, targets = build_targets({a.name: labels[a.name][:0] for a in schema}, schema, 0)
    defined = [t for t in targets if bool(torch.isfinite(probe_directions[t.cols]).all())]
    if not defined:
        raise CounterfactualError("no attribute has a probe head; the latent path needs at least one defined attribute")
    rows = torch.cat([t.cols for t in defined])
    weight = probe_directions[rows].to(torch.float64)
    bias = probe_bias[rows].to(torch.float64)
    if mode == "conditional":
        # the Gaussian conditional mean: E[Δz | WΔz = e] = ΣWᵀ(WΣWᵀ)⁻¹e = L·(WL)⁺e with Σ = LLᵀ the probe set's covariance
        centred = z - z.mean(0)
        covariance = centred.T @ centred / max(1, z.shape[0] - 1)
        jitter = 1e-12 * float(torch.diagonal(covariance).mean().clamp_min(1e-30))
        factor = torch.linalg.cholesky(covariance + jitter * torch.eye(z.shape[1], dtype=torch.float64))
        solve = (factor @ torch.linalg.pinv(weight @ factor, rtol=LATENT_RTOL)).T  # (T, D): v = e @ solve
    elif mode == "least_norm":
        solve = torch.linalg.pinv(weight, rtol=LATENT_RTOL).T  # least-norm v = W⁺e
    else:
        raise CounterfactualError(f"latent mode must be 'least_norm' or 'conditional', got {mode!r}")
    model = LatentModel(weight, solve, {}, mode=mode)
    scores = z @ weight.T + bias
    offset = 0
    for t in defined:
        width = t.cols.numel()
        local = torch.arange(offset, offset + width)
        offset += width
        name, attribute = t.attribute.name, t.attribute
        model.cols[name] = local
        raw = labels[name]
        keep = ~attribute.missing_mask(raw)
        s = scores[keep][:, local]
        if attribute.discrete:
            classes = raw[keep].long()
            count = 2 if attribute.kind == "binary" else attribute.num_classes
            means = torch.zeros(count, width, dtype=torch.float64)
            for c in range(count):
                member = classes == c
                means[c] = s[member].mean(0) if bool(member.any()) else s.mean(0)
            if held_out is not None and name in held_out:
                onehot = torch.nn.functional.one_hot(classes, count).bool()
                present = onehot.any(0)
                columns = onehot[:, 1:] if attribute.kind == "binary" else onehot[:, present]
                inside = float(torch.nanmean(auroc_columns(s if attribute.kind == "binary" else s[:, present], columns)))
                kappa = _shrink(_separation(held_out[name]), _separation(inside))
                centre = means.mean(0, keepdim=True)
                means = centre + kappa * (means - centre)
            model.class_means[name] = means
        else:
            a = raw[keep].to(torch.float64)
            a = a - a.mean()
            slope = float((a * (s[:, 0] - s[:, 0].mean())).sum() / (a * a).sum().clamp_min(1e-300))
            if held_out is not None and name in held_out:
                label = raw[keep].to(torch.float64)
                inside = 1.0 - float(((label - s[:, 0]) ** 2).sum() / ((label - label.mean()) ** 2).sum().clamp_min(1e-300))
                slope *= _shrink(math.sqrt(max(0.0, held_out[name])) if math.isfinite(held_out[name]) else 0.0,
                                 math.sqrt(max(0.0, inside)))
            model.slope[name] = slope
    return model


def _separation(area: float) -> float:
    """Binormal d′ = √2·Φ⁻¹(AUROC), 0 at or below chance (and for NaN)."""
    if not math.isfinite(area) or area <= 0.5:
        return 0.0
    area = min(area, 1.0 - 1e-12)
    return math.sqrt(2.0) * math.sqrt(2.0) * torch.erfinv(torch.tensor(2.0 * area - 1.0, dtype=torch.float64)).item()


def _shrink(outside: float, inside: float) -> float:
    """κ = held-out / in-sample separation, in [0, 1]."""
    if inside <= 0.0:
        return 0.0
    return max(0.0, min(1.0, outside / inside))


def latent_embedder(model: LatentModel, embeddings: torch.Tensor, labels: Mapping[str, torch.Tensor]) -> Embedder:
    """``embed(rows, attribute, values)`` on the latent path."""

    def embed(rows: torch.Tensor, attribute: str, values: torch.Tensor) -> torch.Tensor:
        return model.move(embeddings[rows], attribute, labels[attribute][rows], values)

    return embed


def exact_embedder(model: Any, generator: AttributeGenerator, batch_size: int = 256) -> Embedder:
    """``embed(rows, attribute, values)`` on the exact path: re-render with the generator, embed with the model."""
    from frx_plugin.analysis import hook_embedder

    embed_images = hook_embedder(model)

    def embed(rows: torch.Tensor, attribute: str, values: torch.Tensor) -> torch.Tensor:
        if attribute not in generator.attributes:
            raise CounterfactualError(f"the generator cannot change attribute {attribute!r}; it controls {list(generator.attributes)}")
        out = []
        for start in range(0, rows.numel(), batch_size):
            part = slice(start, start + batch_size)
            with torch.no_grad():
                images = generator.counterfactual(rows[part], attribute, values[part])
            out.append(embed_images(images))
        return torch.cat(out) if out else torch.empty(0, 0)

    return embed


# --------------------------------------------------------------------------- identity significance


def _impostor_mean_cosine(z: torch.Tensor, identity: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean cosine over ordered impostor pairs, per row of ``weights`` (R, n_identities).

    Σ_{id(i)≠id(j)} w_i w_j z_i·z_j = ‖Σ_id W_id Z_id‖² − Σ_id W_id²‖Z_id‖², Z_id the sum of an
    identity's embeddings; the pair count likewise from the counts.
    """
    ids, index = torch.unique(identity, return_inverse=True)
    sums = torch.zeros(ids.numel(), z.shape[1], dtype=torch.float64).index_add_(0, index, z.to(torch.float64))
    counts = torch.bincount(index, minlength=ids.numel()).to(torch.float64)
    total = weights @ sums  # (R, D)
    cross = (total * total).sum(1) - (weights**2) @ (sums * sums).sum(1)
    pairs = (weights @ counts) ** 2 - (weights**2) @ (counts**2)
    return cross / pairs.clamp_min(1e-300)


def identity_significance(
    z: torch.Tensor,
    identity: torch.Tensor,
    schema: AttributeSchema,
    labels: Mapping[str, torch.Tensor],
    embed: Embedder,
    rows: torch.Tensor,
    n_bootstrap: int = 200,
    seed: int = 0,
    attributes: Sequence[str] | None = None,
) -> dict[str, MetricEstimate]:
    """S_k for every attribute of ``schema`` (or of ``attributes``), over the probe rows ``rows``.

    ``z`` (N, D) L2-normalised embeddings of the whole probe set (the impostor pairs of the
    denominator are all of its pairs of different identities); ``rows`` the samples whose
    counterfactuals are made (each with its default edit); labelled rows only per attribute.
    """
    from frx_plugin.randomness import poisson_bootstrap_weights

    if torch.unique(identity).numel() < 2:
        raise CounterfactualError("identity significance needs impostor pairs: the probe set has a single identity")
    ids, index = torch.unique(identity, return_inverse=True)
    replicate = poisson_bootstrap_weights(ids, seed, n_bootstrap) if n_bootstrap else torch.zeros(0, ids.numel(), dtype=torch.float64)
    weights = torch.cat([torch.ones(1, ids.numel(), dtype=torch.float64), replicate])  # (R, identities)
    distance = 1.0 - _impostor_mean_cosine(z, identity, weights)  # (R,)
    out: dict[str, MetricEstimate] = {}
    for attribute in schema:
        if attributes is not None and attribute.name not in attributes:
            continue
        raw = labels[attribute.name]
        keep = rows[~attribute.missing_mask(raw[rows])]
        if keep.numel() == 0:
            continue
        scale = _scale(attribute, raw) if attribute.kind == "continuous" else 1.0
        edited = embed(keep, attribute.name, edit_values(attribute, raw[keep], scale))
        moved = 1.0 - (torch.nn.functional.normalize(z[keep].to(torch.float64), dim=1) * edited.to(torch.float64)).sum(1)
        w = weights[:, index[keep]]  # (R, m)
        value = (w @ moved) / w.sum(1).clamp_min(1e-300) / distance
        out[attribute.name] = _estimate(value[0], value[1:] if n_bootstrap else None)
    return out


# --------------------------------------------------------------------------- pair explanations


@dataclass
class PairExplanation:
    """One recognition error explained: δ per attribute and the attributes that flip the decision."""

    first: int
    second: int
    kind: str  # "false_non_match" | "false_match"
    score: float
    tau: float
    counterfactual: str  # "align" (second takes first's value) | "away" (second moves away from first's)
    delta: dict[str, float]
    deciding: list[str]

    def ranked(self) -> list[tuple[str, float]]:
        """Attributes by how strongly their counterfactual works against the error (largest first)."""
        sign = 1.0 if self.kind == "false_non_match" else -1.0
        finite = [(k, v) for k, v in self.delta.items() if math.isfinite(v)]
        return sorted(finite, key=lambda kv: -sign * kv[1])

    def to_record(self) -> dict[str, Any]:
        return {
            "pair": [self.first, self.second],
            "kind": self.kind,
            "score": self.score,
            "tau": self.tau,
            "counterfactual": self.counterfactual,
            "delta": {k: (None if not math.isfinite(v) else v) for k, v in self.delta.items()},
            "ranked": [k for k, _ in self.ranked()],
            "deciding": list(self.deciding),
        }


def pair_values(attribute: Attribute, raw: torch.Tensor, first: torch.Tensor, second: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The values the second samples take in a pair explanation, and where that changes anything.

    ``raw``: the attribute's labels of the whole probe set; ``first``/``second``: sample indices.
    A false non-match "aligns" (the first's value); a false match moves "away" from the first's
    value (see :func:`away_values`, one standard deviation of the labels for continuous kinds).
    """
    if kind == "false_non_match":
        values = raw[first]
        return values, (values != raw[second]) if attribute.discrete else torch.ones_like(values, dtype=torch.bool)
    scale = _scale(attribute, raw) if attribute.kind == "continuous" else 1.0
    return away_values(attribute, raw[second], raw[first], scale)


def pair_errors(pairs: torch.Tensor, embeddings: torch.Tensor, identity: torch.Tensor, tau: float, verification: Any = None):
    """User-chosen pairs (M, 2) as :class:`~frx_plugin.verification.DecisionErrors` at threshold ``tau``.

    Genuine pairs scoring ≤ τ count as false non-matches, impostor pairs scoring > τ as false
    matches; correct decisions are dropped. Rows outside the probe set are an error that names them.
    """
    from frx_plugin.report import Verification
    from frx_plugin.verification import DecisionErrors

    pairs = torch.as_tensor(pairs, dtype=torch.int64)
    n = embeddings.shape[0]
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise CounterfactualError(f"pairs must be (M, 2) sample indices, got shape {tuple(pairs.shape)}")
    outside = ((pairs < 0) | (pairs >= n)).any(1).nonzero().squeeze(1)
    if outside.numel():
        shown = ", ".join(f"#{int(p)} {pairs[p].tolist()}" for p in outside[:5])
        raise CounterfactualError(
            f"{outside.numel()} pair(s) reference samples that do not exist (the probe set has {n} samples): {shown}"
        )
    # scored in the precision verification uses (float32 unless float64), so τ splits them as it did there
    dtype = torch.float64 if embeddings.dtype == torch.float64 else torch.float32
    z = torch.nn.functional.normalize(embeddings.to(dtype), dim=1)
    score = (z[pairs[:, 0]] * z[pairs[:, 1]]).sum(1)
    genuine = identity[pairs[:, 0]] == identity[pairs[:, 1]]
    fnm = genuine & (score <= tau)
    fm = ~genuine & (score > tau)
    known = verification or Verification(math.nan, math.nan, float(tau), int(genuine.sum()), int((~genuine).sum()))
    fnm_order = torch.argsort(score[fnm], stable=True)  # the worst first, as decision_errors orders them
    fm_order = torch.argsort(score[fm], descending=True, stable=True)
    return DecisionErrors(known, pairs[fnm][fnm_order], score[fnm][fnm_order], pairs[fm][fm_order], score[fm][fm_order])


def spread(count: int, limit: int | None) -> torch.Tensor:
    """Up to ``limit`` of the indices 0..count−1, spread evenly (all of them when there are not more)."""
    if limit is None or count <= limit:
        return torch.arange(count)
    return torch.unique(torch.linspace(0, count - 1, limit).round().long())


def explain_errors(
    errors: Any,
    z: torch.Tensor,
    schema: AttributeSchema,
    labels: Mapping[str, torch.Tensor],
    embed: Embedder,
    max_pairs: int | None = 100,
    attributes: Sequence[str] | None = None,
) -> list[PairExplanation]:
    """Explain the errors of ``errors`` (:class:`~frx_plugin.verification.DecisionErrors`).

    At most ``max_pairs`` of each kind, spread evenly over the errors ordered from the worst;
    every attribute of ``schema`` (or ``attributes``) gets its δ.
    """
    names = list(attributes) if attributes is not None else list(schema.names)
    z = torch.nn.functional.normalize(z.to(torch.float64), dim=1)
    tau = float(errors.tau)
    out: list[PairExplanation] = []
    for kind, pairs, scores in (
        ("false_non_match", errors.false_non_match, errors.false_non_match_score),
        ("false_match", errors.false_match, errors.false_match_score),
    ):
        chosen = spread(pairs.shape[0], max_pairs)
        if chosen.numel() == 0:
            continue
        first, second, score = pairs[chosen, 0], pairs[chosen, 1], scores[chosen].to(torch.float64)
        delta = torch.full((chosen.numel(), len(names)), math.nan, dtype=torch.float64)
        for c, name in enumerate(names):
            attribute = schema[name]
            raw = labels[name]
            labelled = ~(attribute.missing_mask(raw[first]) | attribute.missing_mask(raw[second]))
            values, moves = pair_values(attribute, raw, first, second, kind)
            changed = labelled & moves
            delta[labelled, c] = 0.0
            todo = changed.nonzero().squeeze(1)
            if todo.numel():
                edited = embed(second[todo], name, values[todo]).to(torch.float64)
                delta[todo, c] = (z[first[todo]] * edited).sum(1) - score[todo]
        for p in range(chosen.numel()):
            d = {name: float(delta[p, c]) for c, name in enumerate(names)}
            s = float(score[p])
            if kind == "false_non_match":
                deciding = [k for k, v in d.items() if math.isfinite(v) and s + v > tau]
            else:
                deciding = [k for k, v in d.items() if math.isfinite(v) and s + v <= tau]
            explanation = PairExplanation(int(first[p]), int(second[p]), kind, s, tau,
                                          "align" if kind == "false_non_match" else "away", d, [])
            order = [k for k, _ in explanation.ranked()]
            explanation.deciding = [k for k in order if k in deciding]
            out.append(explanation)
    return out


def error_attribution(explanations: Sequence[PairExplanation], names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Share of errors each attribute explains: ``{"all" | kind: {attribute: share}}`` (NaN without errors)."""
    out: dict[str, dict[str, float]] = {}
    for kind in ("all", "false_non_match", "false_match"):
        chosen = [e for e in explanations if kind == "all" or e.kind == kind]
        out[kind] = {
            name: (sum(name in e.deciding for e in chosen) / len(chosen)) if chosen else math.nan for name in names
        }
    return out
