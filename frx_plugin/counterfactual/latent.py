"""The latent path: z moves along the probe heads where no generator can render the probe set."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from frx_plugin.attributes import AttributeSchema
from frx_plugin.errors import CounterfactualError
from frx_plugin.interfaces import Embedder

LATENT_RTOL = 1e-3


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
        moved = z.to(torch.float64) + self.shift(z, attribute, old, new)
        return torch.nn.functional.normalize(moved, dim=1).to(torch.float32)

    def shift(self, z: torch.Tensor, attribute: str, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """The move v (m, D) float64 of rows z (m, D) that changes attribute's head as from ``old`` to ``new``."""
        if attribute not in self.cols:
            raise CounterfactualError(f"attribute {attribute!r} has no probe head for the latent path (undefined leakage)")
        cols = self.cols[attribute]
        if attribute in self.class_means:
            means = self.class_means[attribute]
            delta = means[new.to(means.device).long()] - means[old.to(means.device).long()]  # (m, width)
        else:
            delta = (self.slope[attribute] * (new.to(z.device, torch.float64) - old.to(z.device, torch.float64)))[:, None]
        e = torch.zeros(z.shape[0], self.weight.shape[0], dtype=torch.float64, device=z.device)
        e[:, cols] = delta.to(z.device)
        return e @ self.solve.to(z.device)


def _head_inverse(z: torch.Tensor, weight: torch.Tensor, mode: str) -> torch.Tensor:
    """(T, D) ``solve`` with v = e @ solve: the move of z that changes the head scores by e (``mode``, see :func:`latent_model`).

    The inverses are truncated relative to their largest singular value (``LATENT_RTOL``).
    """
    if mode == "conditional":
        # the Gaussian conditional mean: E[Δz | WΔz = e] = ΣWᵀ(WΣWᵀ)⁻¹e = L·(WL)⁺e with Σ = LLᵀ the probe set's covariance
        centred = z - z.mean(0)
        covariance = centred.T @ centred / max(1, z.shape[0] - 1)
        jitter = 1e-12 * float(torch.diagonal(covariance).mean().clamp_min(1e-30))
        factor = torch.linalg.cholesky(covariance + jitter * torch.eye(z.shape[1], dtype=torch.float64, device=z.device))
        return (factor @ torch.linalg.pinv(weight @ factor, rtol=LATENT_RTOL)).T
    if mode == "least_norm":
        return torch.linalg.pinv(weight, rtol=LATENT_RTOL).T  # least-norm v = W⁺e
    raise CounterfactualError(f"latent mode must be 'least_norm' or 'conditional', got {mode!r}")


def counterfactual_heads(embeddings: torch.Tensor, identity: torch.Tensor, labels: Mapping[str, torch.Tensor], schema: AttributeSchema,
                         seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """(directions, bias, held-out value per attribute) of the heads the latent and decoded moves invert.

    Ridge heads whose 0/1 columns choose their penalty by the inner-fold squared error, as continuous ones do
    (``discrete_penalty="squared_error"``), not on the logistic scale the leakage heads use: a head shrunk
    towards C = 1 points along the *unwhitened* class-mean difference, whose conditional move then runs into
    the identity directions (on the ground-truth check the moves' S_k lost their ranking, Spearman 0.92 → 0.86,
    and the planted causes, 0.98 → 0.33), while a near-discriminant head moves z by the class-mean difference.
    """
    from frx_plugin.leakage import analyze_embeddings

    report = analyze_embeddings(embeddings, identity, labels, schema, n_bootstrap=0, seed=seed, discrete_penalty="squared_error")
    held_out = {a.name: report.unreported.get(a.name, a.value) for a in report.leakage}
    return report.tensors["probe_directions"], report.tensors["probe_bias"], held_out


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
    from frx_plugin.leakage import auroc_columns, build_targets

    z = embeddings.to(torch.float64)
    device = z.device
    probe_directions, probe_bias = probe_directions.to(device), probe_bias.to(device)
    _, targets = build_targets({a.name: labels[a.name][:0] for a in schema}, schema, 0)
    defined = [t for t in targets if bool(torch.isfinite(probe_directions[t.cols]).all())]
    if not defined:
        raise CounterfactualError("no attribute has a probe head; the latent path needs at least one defined attribute")
    rows = torch.cat([t.cols for t in defined])
    weight = probe_directions[rows].to(torch.float64)
    bias = probe_bias[rows].to(torch.float64)
    model = LatentModel(weight, _head_inverse(z, weight, mode), {}, mode=mode)
    scores = z @ weight.T + bias
    offset = 0
    for t in defined:
        width = t.cols.numel()
        local = torch.arange(offset, offset + width, device=device)
        offset += width
        name, attribute = t.attribute.name, t.attribute
        model.cols[name] = local
        raw = labels[name].to(device)
        keep = ~attribute.missing_mask(raw)
        s = scores[keep][:, local]
        if attribute.discrete:
            classes = raw[keep].long()
            count = 2 if attribute.kind == "binary" else attribute.num_classes
            means = torch.zeros(count, width, dtype=torch.float64, device=device)
            for c in range(count):
                member = classes == c
                means[c] = s[member].mean(0) if bool(member.any()) else s.mean(0)
            if held_out is not None and name in held_out:
                onehot = torch.nn.functional.one_hot(classes, count).bool()
                present = onehot.any(0)
                columns = onehot[:, 1:] if attribute.kind == "binary" else onehot[:, present]
                inside = float(torch.nanmean(auroc_columns(s if attribute.kind == "binary" else s[:, present], columns)))
                kappa = shrink(separation(held_out[name]), separation(inside))
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
                slope *= shrink(math.sqrt(max(0.0, held_out[name])) if math.isfinite(held_out[name]) else 0.0,
                                 math.sqrt(max(0.0, inside)))
            model.slope[name] = slope
    return model


def separation(area: float) -> float:
    """Binormal d′ = √2·Φ⁻¹(AUROC), 0 at or below chance (and for NaN)."""
    if not math.isfinite(area) or area <= 0.5:
        return 0.0
    area = min(area, 1.0 - 1e-12)
    return math.sqrt(2.0) * math.sqrt(2.0) * torch.erfinv(torch.tensor(2.0 * area - 1.0, dtype=torch.float64, device="cpu")).item()


def shrink(outside: float, inside: float) -> float:
    """κ = held-out / in-sample separation, in [0, 1]."""
    if inside <= 0.0:
        return 0.0
    return max(0.0, min(1.0, outside / inside))


def latent_embedder(model: LatentModel, embeddings: torch.Tensor, labels: Mapping[str, torch.Tensor]) -> Embedder:
    """``embed(rows, attribute, values)`` on the latent path."""

    def embed(rows: torch.Tensor, attribute: str, values: torch.Tensor) -> torch.Tensor:
        return model.move(embeddings[rows], attribute, labels[attribute][rows], values)

    return embed
