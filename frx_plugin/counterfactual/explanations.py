"""Pair explanations: which attribute, changed alone, flips a false match or a false non-match."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from frx_plugin.attributes import Attribute, AttributeSchema
from frx_plugin.counterfactual.edits import away_values, edit_scale
from frx_plugin.counterfactual.significance import base_embeddings, embed_edits
from frx_plugin.errors import CounterfactualError
from frx_plugin.interfaces import Embedder


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
    scale = edit_scale(attribute, raw) if attribute.kind == "continuous" else 1.0
    return away_values(attribute, raw[second], raw[first], scale)


def pair_errors(pairs: torch.Tensor, embeddings: torch.Tensor, identity: torch.Tensor, tau: float, verification: Any = None):
    """User-chosen pairs (M, 2) as :class:`~frx_plugin.verification.DecisionErrors` at threshold ``tau``.

    Genuine pairs scoring ≤ τ count as false non-matches, impostor pairs scoring > τ as false
    matches; correct decisions are dropped. Rows outside the probe set are an error that names them.
    """
    from frx_plugin.report import Verification
    from frx_plugin.verification import DecisionErrors

    pairs = torch.as_tensor(pairs, dtype=torch.int64).to(embeddings.device)
    identity = identity.to(embeddings.device)
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
        return torch.arange(count, device="cpu")
    return torch.unique(torch.linspace(0, count - 1, limit, device="cpu").round().long())


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
        # the few chosen pairs on the host (they index the probe's labels there); their δ come back per attribute
        first, second = pairs[chosen.to(pairs.device), 0].cpu(), pairs[chosen.to(pairs.device), 1].cpu()
        score = scores[chosen.to(scores.device)].to("cpu", torch.float64)
        delta = torch.full((chosen.numel(), len(names)), math.nan, dtype=torch.float64, device="cpu")
        work = []  # (column, pairs to change): every attribute's edits embedded in one stream
        for c, name in enumerate(names):
            attribute = schema[name]
            raw = labels[name]
            labelled = ~(attribute.missing_mask(raw[first]) | attribute.missing_mask(raw[second]))
            values, moves = pair_values(attribute, raw, first, second, kind)
            delta[labelled, c] = 0.0
            todo = (labelled & moves).nonzero().squeeze(1)
            if todo.numel():
                work.append((c, todo, (second[todo], name, values[todo])))
        changed = embed_edits(embed, [edit for _, _, edit in work])
        # δ against the unedited embedding: z_j itself (the score), or on the decoded path the unedited rendering of j's code
        unedited = score
        if callable(getattr(embed, "unedited", None)):
            before = base_embeddings(embed, second, z)
            unedited = (z[first] * torch.nn.functional.normalize(before.to(z.device, torch.float64), dim=1)).sum(1).cpu()
        for (c, todo, _), edited in zip(work, changed):
            delta[todo, c] = (z[first[todo]] * edited.to(z.device, torch.float64)).sum(1).cpu() - unedited[todo]
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


def figure_pairs(explanations: Sequence[PairExplanation], count: int) -> list[PairExplanation]:
    """Up to ``count`` pairs for a figure, the worst of each kind first, alternating false non-matches and false matches."""
    by_kind = [[e for e in explanations if e.kind == kind] for kind in ("false_non_match", "false_match")]
    chosen: list[PairExplanation] = []
    for i in range(max((len(group) for group in by_kind), default=0)):
        for group in by_kind:
            if i < len(group) and len(chosen) < count:
                chosen.append(group[i])
    return chosen


def error_attribution(explanations: Sequence[PairExplanation], names: Sequence[str]) -> dict[str, dict[str, float | None]]:
    """Share of errors each attribute explains: ``{"all" | kind: {attribute: share}}`` (NaN without errors)."""
    out: dict[str, dict[str, float | None]] = {}  # the type of Report.error_attribution (a record read back may hold None)
    for kind in ("all", "false_non_match", "false_match"):
        chosen = [e for e in explanations if kind == "all" or e.kind == kind]
        out[kind] = {
            name: (sum(name in e.deciding for e in chosen) / len(chosen)) if chosen else math.nan for name in names
        }
    return out
