"""Demographic differentials: verification error rates per attribute group at one global threshold.

In the manner of NIST FRVT's demographic differentials, every group of every attribute of a probe
set's schema is scored at the same operating point: the global threshold τ that sets the target
false-match rate over all impostor pairs of the probe set (:func:`frx_plugin.verification.verification`).
A pair is accepted when its cosine score is > τ.

Groups. A binary or categorical attribute's groups are its classes; a continuous attribute's are
``bands`` quantile bands of its labelled values: with edges q₀ < q₁ < … < q_B (the quantiles at
0, 1/B, …, 1, duplicates merged), band b holds [q_b, q_{b+1}), the last one [q_{B−1}, q_B] (its high
is the largest labelled value). Missing labels (-1, NaN) belong to no group. A pair belongs to
group g when both of its images are in g, so a pair across groups counts in none.

Per group g, at τ:

* FNMR_g = #{genuine pairs in g with score ≤ τ} / #{genuine pairs in g} (genuine: same identity);
* FMR_g = #{impostor pairs in g with score > τ} / #{impostor pairs in g} (same-group impostors).

Summaries over the groups whose rates are measured (see below), for FMR and FNMR each:

* ratio = max_g x_g / min_g x_g (∞, written null, when the least rate is 0);
* FDR (Fairness Discrepancy Rate; T. de Freitas Pereira and S. Marcel, "Fairness in Biometrics:
  a figure of merit to assess biometric verification systems", IEEE Transactions on Biometrics, Behavior, and
  Identity Science, 2021, doi:10.1109/TBIOM.2021.3102862, arXiv:2011.02395):
  FDR(τ) = 1 − (α·A(τ) + (1 − α)·B(τ)), A(τ) = max_{g,h} |FMR_g − FMR_h|, B(τ) = max_{g,h} |FNMR_g − FNMR_h|;
  1 is perfectly fair;
* GARBE (Gini Aggregation Rate for Biometric Equitability; J. J. Howard, E. J. Laird, Y. B. Sirotin,
  R. E. Rubin, J. L. Tipton and A. R. Vemury, "Evaluating proposed fairness models for face
  recognition algorithms", arXiv:2203.05051, 2022; proposed for ISO/IEC 19795-10): the Gini
  coefficient of n rates with the small-sample correction, G_x = n/(n − 1) · Σ_i Σ_j |x_i − x_j| / (2 n² x̄),
  and GARBE(τ) = α·G_FMR + (1 − α)·G_FNMR; 0 is perfectly fair. G_x is undefined (null) when x̄ = 0.

α weighs false matches (0.5 by default, as both papers leave it to the policy of the use case).

Too small. A group's FNMR is measured only with at least ``min_pairs`` genuine pairs from at least
``min_identities`` identities; its FMR only with at least max(``min_pairs``, ⌈1/fmr⌉) same-group
impostor pairs (fewer cannot resolve a rate at the target FMR: a 0 there is no measurement) among
at least ``min_identities`` identities with an image in the group. Otherwise the rate is ``None``
with the reason, and the group is left out of that rate's summaries; a summary needs two groups.

95% intervals: the identity bootstrap of frx (:func:`~frx_plugin.randomness.poisson_bootstrap_weights`).
Replicate r draws every identity k a Poisson(1) multiplicity m_k, as if the probe set held m_k
copies of that person. A genuine pair of identity k then occurs m_k times (once per copy; pairs
across two copies of one person are neither genuine comparisons of distinct images nor impostors,
and are left out), so its weight is m_k; an impostor pair of identities k ≠ l occurs m_k·m_l times.
Each rate of a replicate is the ratio of its weighted counts; τ stays at the point estimate (the
global τ is the operating point being audited, not re-estimated per replicate), so the intervals
show the sampling error of the rates at that operating point. The summaries are computed per
replicate over the groups measured at the point estimate (NaN when one of them has no weight);
the intervals are the percentiles of :func:`~frx_plugin.leakage.functional.bootstrap_estimate`.
Max/min ratios and Gini indices of noisy rates are biased upward in the bootstrap (the replicates'
extreme groups spread further than the sample's), so with small groups their percentile interval
can lie above the point value; it is reported as it is (a bias-corrected interval over-corrects
there), and the tables say so.

Cost. The scores of one blocked pass over the upper triangle of the score matrix (never an N×N
matrix): the genuine scores at their places and only the impostor pairs with score > τ (a fraction
about fmr of them). In a pass these come from the verification's own scoring pass
(:func:`~frx_plugin.verification.scored_verification`), which keeps them; alone, the function
makes that pass itself. Every count is
accumulated per (identity, group), so the bootstrap is a few (R, K) × (K, G) products: the impostor
pairs of a group in a replicate are ½[(Σ_k m_k n_kg)² − Σ_k m_k² n_kg²], n_kg the images of identity k
in group g. Everything runs on the embeddings' device; labels and identities come from the host.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from frx_plugin.attributes import Attribute, AttributeSchema
from frx_plugin.errors import AnalysisError
from frx_plugin.leakage.functional import MetricEstimate
from frx_plugin.randomness import poisson_bootstrap_weights
from frx_plugin.report import Verification
from frx_plugin.verification import ScoredPairs, genuine_pairs, prepare_embeddings, score_blocks

__all__ = ["AttributeDifferentials", "DemographicDifferentials", "GroupRates",
           "attribute_groups", "demographic_differentials"]

#: Bootstrap-weighted pair entries held at once while the false matches are counted.
_WEIGHT_ENTRIES = 4_000_000
_SUMMARIES = ("fnmr_ratio", "fmr_ratio", "fdr", "garbe")
#: Whole numbers up to this are exact in float32 (the weight products are summed in float32 below it).
_FLOAT32_EXACT = 2.0**24


def _estimate_record(estimate: MetricEstimate | None) -> dict[str, Any] | None:
    """A value and its interval for JSON: non-finite numbers as ``None``; a max/min ratio whose least
    rate is 0 (infinite) also says ``"infinite": true``."""
    if estimate is None:
        return None
    def clean(x: float) -> float | None:
        return x if math.isfinite(x) else None

    record = {"value": clean(estimate.value), "low": clean(estimate.low), "high": clean(estimate.high),
              "undefined": estimate.undefined, "replicates": estimate.replicates}
    if estimate.value == math.inf:
        record["infinite"] = True
    return record


@dataclass
class GroupRates:
    """FNMR and FMR of one group at the global τ, with their counts and 95% intervals.

    ``fnmr`` / ``fmr`` are ``None`` when the group is too small for that rate; ``fnmr_too_small`` /
    ``fmr_too_small`` then say why (else ``None``). ``low`` / ``high``: a continuous attribute's band.
    """

    label: str
    images: int
    genuine_pairs: int
    genuine_identities: int
    false_non_matches: int
    impostor_pairs: int
    impostor_identities: int
    false_matches: int
    fnmr: MetricEstimate | None
    fmr: MetricEstimate | None
    fnmr_too_small: str | None = None
    fmr_too_small: str | None = None
    low: float | None = None
    high: float | None = None

    def to_record(self) -> dict[str, Any]:
        record = {k: getattr(self, k) for k in ("label", "low", "high", "images", "genuine_pairs", "genuine_identities",
                                                 "false_non_matches", "impostor_pairs", "impostor_identities", "false_matches")}
        record.update(fnmr=_estimate_record(self.fnmr), fmr=_estimate_record(self.fmr),
                      fnmr_too_small=self.fnmr_too_small, fmr_too_small=self.fmr_too_small)
        return record


@dataclass
class AttributeDifferentials:
    """The groups of one attribute and the summaries of their rates (module docstring).

    ``replicates``: the bootstrap replicates (R, G) of ``fnmr`` and ``fmr`` (NaN where a group has no
    weight) and (R,) of each summary, on the CPU; not part of the record.
    """

    name: str
    kind: str
    groups: list[GroupRates]
    fnmr_ratio: MetricEstimate
    fmr_ratio: MetricEstimate
    fdr: MetricEstimate
    garbe: MetricEstimate
    replicates: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def summary(self, name: str) -> MetricEstimate:
        return getattr(self, name)

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"name": self.name, "kind": self.kind, "groups": [g.to_record() for g in self.groups]}
        record.update({name: _estimate_record(self.summary(name)) for name in _SUMMARIES})
        return record


@dataclass
class DemographicDifferentials:
    """Demographic differentials of every attribute of a probe set at the global threshold ``tau``."""

    tau: float
    fmr: float
    alpha: float
    n_bootstrap: int
    seed: int
    min_pairs: int
    min_identities: int
    attributes: list[AttributeDifferentials]

    def __getitem__(self, name: str) -> AttributeDifferentials:
        for item in self.attributes:
            if item.name == name:
                return item
        raise KeyError(f"no attribute {name!r}; the differentials have {[a.name for a in self.attributes]}")

    def to_record(self) -> dict[str, Any]:
        settings = {k: getattr(self, k) for k in ("tau", "fmr", "alpha", "n_bootstrap", "seed", "min_pairs", "min_identities")}
        return {**settings, "attributes": [a.to_record() for a in self.attributes]}

    def scalars(self) -> dict[str, float]:
        """``frx/differential/<attribute>/<summary>`` for every finite summary value."""
        out = {}
        for item in self.attributes:
            for name in _SUMMARIES:
                value = item.summary(name).value
                if math.isfinite(value):
                    out[f"frx/differential/{item.name}/{name}"] = float(value)
        return out

    def most_unequal(self) -> str | None:
        """The attribute with the highest finite GARBE (the one to draw DET curves for), or ``None``."""
        finite = [(a.garbe.value, a.name) for a in self.attributes if math.isfinite(a.garbe.value)]
        return max(finite)[1] if finite else None


def attribute_groups(attribute: Attribute, labels: torch.Tensor, bands: int = 4
                     ) -> tuple[torch.Tensor, list[str], list[tuple[float, float]] | None]:
    """(group of every sample (N,) int64 on the CPU, -1 where missing; group labels; band edges or ``None``).

    Discrete attributes: the classes. Continuous ones: up to ``bands`` quantile bands [low, high)
    of the labelled values (the last one includes its high, the largest value); tied quantiles
    merge bands.
    """
    labels = labels.detach().to("cpu")
    if attribute.discrete:
        return labels.to(torch.int64), list(attribute.class_names), None
    if bands < 1:
        raise AnalysisError(f"bands must be at least 1, got {bands}")
    values = labels.to(torch.float64)
    known = ~torch.isnan(values)
    codes = torch.full(values.shape, -1, dtype=torch.int64, device="cpu")
    if not bool(known.any()):
        return codes, [], []
    levels = torch.linspace(0.0, 1.0, bands + 1, dtype=torch.float64, device="cpu")
    edges = torch.unique(torch.quantile(values[known], levels))
    if edges.numel() == 1:  # one value: one band holding it
        edges = torch.cat([edges, edges])
    codes[known] = torch.bucketize(values[known], edges[1:-1].contiguous(), right=True)
    spans = [(float(edges[b]), float(edges[b + 1])) for b in range(edges.numel() - 1)]
    names = [f"[{low:.4g}, {high:.4g}" + ("]" if b == len(spans) - 1 else ")") for b, (low, high) in enumerate(spans)]
    return codes, names, spans


@dataclass
class _Groups:
    """What the differentials of a probe set need that its embeddings do not change (the same in every pass).

    ``who``: identity index 0..K−1 per sample; ``weights``: (1 + R, K) float64, row 0 all ones;
    ``slots``: (A, N) group slot of every sample for every attribute (distinct ranges per attribute,
    -1 missing); ``layout``: (attribute, group names, band spans, its slot columns) per attribute;
    ``first``/``second``: the genuine pairs; ``pairs_k``/``images_k``: (K, S) genuine pairs and images
    per identity and slot; ``static``: the counts that follow from them.
    """

    who: torch.Tensor
    weights: torch.Tensor
    slots: torch.Tensor
    n_slots: int
    layout: list
    first: torch.Tensor
    second: torch.Tensor
    static: dict[str, torch.Tensor]

    def to(self, device: torch.device) -> _Groups:
        """These groups with every tensor on ``device`` (themselves on the CPU)."""
        return _Groups(self.who.to(device), self.weights.to(device), self.slots.to(device), self.n_slots, self.layout,
                       self.first.to(device), self.second.to(device), {name: t.to(device) for name, t in self.static.items()})


#: The last probe sets' groups, on the CPU (a device holds nothing between passes), by the digest of their
#: identities, labels, schema and options.
_GROUPS: OrderedDict = OrderedDict()
_GROUPS_KEPT = 2


def _groups(identity: torch.Tensor, labels: Mapping[str, torch.Tensor], schema: AttributeSchema, bands: int, seed: int,
            n_bootstrap: int, device: torch.device) -> _Groups:
    """The probe set's :class:`_Groups` on ``device``, remembered on the CPU: a training's passes share one probe set."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps([schema.to_json(), bands, seed, n_bootstrap]).encode())
    for tensor in (identity, *(labels[a.name] for a in schema)):
        digest.update(str(tensor.dtype).encode() + tensor.detach().to("cpu").contiguous().numpy().tobytes())
    key = digest.digest()
    if key in _GROUPS:
        _GROUPS.move_to_end(key)
        return _GROUPS[key].to(device)
    unique, who = torch.unique(identity.to("cpu", torch.int64), return_inverse=True)
    # the weights depend only on the label, so drawing them for the K labels gives the samples' columns
    ones = torch.ones(1, unique.numel(), dtype=torch.float64, device="cpu")
    weights = torch.cat([ones, poisson_bootstrap_weights(unique, seed, n_bootstrap)])
    slots, layout, offset = [], [], 0
    for attribute in schema:
        codes, names, spans = attribute_groups(attribute, labels[attribute.name], bands)
        slots.append(torch.where(codes >= 0, codes + offset, -1))
        layout.append((attribute, names, spans, slice(offset, offset + len(names))))
        offset += len(names)
    n = identity.shape[0]
    slot_matrix = torch.stack(slots) if slots else torch.empty(0, n, dtype=torch.int64, device="cpu")
    first, second = genuine_pairs(identity.to("cpu"))
    k = weights.shape[1]
    pairs_k = _per_identity(slot_matrix, who, offset, k, first, second)
    slot, sample = (slot_matrix >= 0).nonzero(as_tuple=True)
    images_k = torch.bincount(who[sample] * offset + slot_matrix[slot, sample], minlength=k * offset)
    images_k = images_k.view(k, offset).to(torch.float64)
    per_group = weights @ images_k
    static = {"genuine": weights @ pairs_k, "impostor": 0.5 * (per_group**2 - (weights**2) @ (images_k**2)),
              "genuine_identities": (pairs_k > 0).sum(0), "impostor_identities": (images_k > 0).sum(0), "images": images_k.sum(0)}
    groups = _Groups(who, weights, slot_matrix, offset, layout, first, second, static)
    _GROUPS[key] = groups
    while len(_GROUPS) > _GROUPS_KEPT:
        _GROUPS.popitem(last=False)
    return groups.to(device)


def _per_identity(slots: torch.Tensor, who: torch.Tensor, n_slots: int, k: int, i: torch.Tensor, j: torch.Tensor,
                  flag: torch.Tensor | None = None) -> torch.Tensor:
    """(K, S) counts of the pairs (i, j) of one identity whose two images share a slot (and ``flag``)."""
    same = (slots[:, i] == slots[:, j]) & (slots[:, i] >= 0)
    if flag is not None:
        same &= flag[None, :]
    a, p = same.nonzero(as_tuple=True)
    key = who[i[p]] * n_slots + slots[a, i[p]]
    return torch.bincount(key, minlength=k * n_slots).view(k, n_slots).to(torch.float64)


def _scored_at(z: torch.Tensor, identity: torch.Tensor, tau: float, scored: ScoredPairs | None):
    """(every genuine score in :func:`genuine_pairs` order, float64; the impostor pairs (a, b) with score > τ, in parts).

    From the verification pass's ``scored`` pairs when they cover τ, else from a blocked pass of their own.
    """
    if scored is not None and scored.n == z.shape[0] and tau >= scored.bound:
        first, second, _ = scored.above(tau)
        return scored.genuine.double(), [(first, second)]
    scores, kept = [], []
    # the bound a hair below τ whatever the scores' precision; the exact test is in float64 below
    bound = tau - 1e-6 * max(1.0, abs(tau))
    for genuine, impostor, pairs in score_blocks(z, identity, bound):
        scores.append(genuine)
        above = impostor.double() > tau
        kept.append((pairs[0][above], pairs[1][above]))
    genuine_scores = torch.cat(scores).double() if scores else torch.empty(0, dtype=torch.float64, device=z.device)
    return genuine_scores, kept


def _counts(z: torch.Tensor, identity: torch.Tensor, groups: _Groups, tau: float, scored: ScoredPairs | None = None
            ) -> dict[str, torch.Tensor]:
    """Weighted pair counts per group slot from one blocked pass (``scored``'s, when given); see the module docstring.

    Returns (1 + R, S) float64 ``genuine``, ``misses``, ``impostor``, ``matches`` and the per-slot
    identity counts ``genuine_identities``, ``impostor_identities`` and ``images``.
    """
    device, weights, slots, who, n_slots = z.device, groups.weights, groups.slots, groups.who, groups.n_slots
    k = weights.shape[1]
    genuine_scores, kept = _scored_at(z, identity, tau, scored)
    misses_k = _per_identity(slots, who, n_slots, k, groups.first, groups.second, genuine_scores <= tau)
    # matches[s, r] = Σ over (identity pair (k, l), slot s) entries of count · w_rk · w_rl: the weight product of each
    # identity pair is made once (P × R), then summed into the slots by one sparse (S × P) product
    matches = torch.zeros(n_slots, weights.shape[0], dtype=torch.float64, device=device)
    keys = []
    for i, j in kept:
        same = (slots[:, i] == slots[:, j]) & (slots[:, i] >= 0)
        a, p = same.nonzero(as_tuple=True)
        keys.append((who[i[p]] * k + who[j[p]]) * n_slots + slots[a, i[p]])  # images of the same two people share a weight
    if keys:
        key, count = torch.unique(torch.cat(keys), return_counts=True)
        pair, slot = key // n_slots, key % n_slots
        pairs, column = torch.unique_consecutive(pair, return_inverse=True)  # the keys are sorted, so their pairs are
        # the weights are whole numbers: float32 (half the memory traffic) holds every product and every sum exactly
        # while the largest possible sum, (max weight)² · Σ count, stays below 2^24
        exact = float(weights.max()) ** 2 * float(count.sum()) < _FLOAT32_EXACT
        dtype = torch.float32 if exact else torch.float64
        by_identity = weights.T.to(dtype).contiguous()  # (K, 1 + R): an identity's weights are one contiguous row to gather
        step = max(1, _WEIGHT_ENTRIES // weights.shape[0])
        for start in range(0, pairs.numel(), step):  # identity pairs in chunks of the products' memory
            chunk = pairs[start : start + step]
            product = by_identity[chunk // k].mul_(by_identity[chunk % k])  # (P_chunk, 1 + R)
            inside = (column >= start) & (column < start + chunk.numel())
            entries = torch.sparse_coo_tensor(torch.stack([slot[inside], column[inside] - start]), count[inside].to(dtype),
                                              (n_slots, chunk.numel()), device=device, check_invariants=False)
            matches += torch.sparse.mm(entries, product).double()
    return {**groups.static, "misses": weights @ misses_k, "matches": matches.T}


def _spread(rates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(max/min ratio, max − min, corrected Gini) of each row of (1 + R, n) rates, n ≥ 2; NaN propagates."""
    n = rates.shape[1]
    high, low = rates.amax(1), rates.amin(1)
    ratio = torch.where(low > 0, high / low, torch.where(high > 0, math.inf, math.nan))
    differences = (rates[:, :, None] - rates[:, None, :]).abs().sum((1, 2))
    mean = rates.mean(1)
    gini = torch.where(mean > 0, n / (n - 1) * differences / (2 * n * n * mean), math.nan)
    return ratio, high - low, gini


def _estimates(columns: torch.Tensor) -> list[MetricEstimate]:
    """One estimate per column of (1 + R, M) values: row 0 the point value, the rest its bootstrap replicates.

    As :func:`~frx_plugin.leakage.functional.bootstrap_estimate` column by column (±∞ replicates count as
    undefined; no interval with fewer than half of them finite), in one quantile call for all M.
    """
    values = columns.to("cpu", torch.float64)
    points, replicates = values[0].tolist(), torch.where(torch.isinf(values[1:]), math.nan, values[1:])
    total = replicates.shape[0]
    if values.shape[1] == 0:  # an attribute without a group (every label missing)
        return []
    if total == 0:
        return [MetricEstimate(point, math.nan, math.nan, 0, 0) for point in points]
    finite = (~torch.isnan(replicates)).sum(0).tolist()
    quantiles = torch.tensor([0.025, 0.975], dtype=torch.float64, device="cpu")
    low, high = torch.nanquantile(replicates, quantiles, dim=0).tolist()
    return [MetricEstimate(point, lo if n and n >= 0.5 * total else math.nan, hi if n and n >= 0.5 * total else math.nan,
                           total - n, total) for point, lo, hi, n in zip(points, low, high, finite)]


def _too_small(pairs: int, identities: int, min_pairs: int, min_identities: int, kind: str) -> str | None:
    if pairs < min_pairs:
        return f"{pairs} {kind} pairs, fewer than the {min_pairs} needed"
    if identities < min_identities:
        return f"{kind} pairs from {identities} identities, fewer than the {min_identities} needed"
    return None


def _attribute_result(attribute: Attribute, names: list[str], spans, counts: dict[str, torch.Tensor], columns: slice,
                      settings: dict[str, Any]) -> AttributeDifferentials:
    """The groups and summaries of one attribute from its columns of the counts."""
    c = {key: value[..., columns].to("cpu") for key, value in counts.items()}
    fnmr = torch.where(c["genuine"] > 0, c["misses"] / c["genuine"].clamp_min(1e-300), math.nan)
    fmr = torch.where(c["impostor"] > 0, c["matches"] / c["impostor"].clamp_min(1e-300), math.nan)
    fmr_pairs = max(settings["min_pairs"], math.ceil(1.0 / settings["fmr"] - 1e-9))
    fnmr_estimates, fmr_estimates = _estimates(fnmr), _estimates(fmr)
    groups, fnmr_ok, fmr_ok = [], [], []
    for g, label in enumerate(names):
        genuine, impostor = int(c["genuine"][0, g]), int(c["impostor"][0, g])
        why_fnmr = _too_small(genuine, int(c["genuine_identities"][g]), settings["min_pairs"], settings["min_identities"], "genuine")
        why_fmr = _too_small(impostor, int(c["impostor_identities"][g]), fmr_pairs, settings["min_identities"], "impostor")
        if why_fmr is not None and impostor < fmr_pairs and fmr_pairs > settings["min_pairs"]:
            why_fmr += f" (1/FMR = {1.0 / settings['fmr']:g})"
        fnmr_ok.append(why_fnmr is None)
        fmr_ok.append(why_fmr is None)
        low, high = spans[g] if spans is not None else (None, None)
        groups.append(GroupRates(
            label=label, images=int(c["images"][g]), genuine_pairs=genuine, genuine_identities=int(c["genuine_identities"][g]),
            false_non_matches=int(c["misses"][0, g]), impostor_pairs=impostor, impostor_identities=int(c["impostor_identities"][g]),
            false_matches=int(c["matches"][0, g]), fnmr=fnmr_estimates[g] if why_fnmr is None else None,
            fmr=fmr_estimates[g] if why_fmr is None else None, fnmr_too_small=why_fnmr, fmr_too_small=why_fmr,
            low=low, high=high))
    rows = fnmr.shape[0]
    undefined = torch.full((rows,), math.nan, dtype=torch.float64, device="cpu")
    fnmr_in, fmr_in = fnmr[:, torch.tensor(fnmr_ok, dtype=torch.bool, device="cpu")], fmr[:, torch.tensor(fmr_ok, dtype=torch.bool, device="cpu")]
    fnmr_ratio, fnmr_spread, fnmr_gini = _spread(fnmr_in) if fnmr_in.shape[1] >= 2 else (undefined,) * 3
    fmr_ratio, fmr_spread, fmr_gini = _spread(fmr_in) if fmr_in.shape[1] >= 2 else (undefined,) * 3
    alpha = settings["alpha"]
    fdr = 1.0 - (alpha * fmr_spread + (1.0 - alpha) * fnmr_spread)
    garbe = alpha * fmr_gini + (1.0 - alpha) * fnmr_gini
    summaries = {"fnmr_ratio": fnmr_ratio, "fmr_ratio": fmr_ratio, "fdr": fdr, "garbe": garbe}
    replicates = {"fnmr": fnmr[1:], "fmr": fmr[1:], **{name: value[1:] for name, value in summaries.items()}}
    return AttributeDifferentials(attribute.name, attribute.kind, groups, replicates=replicates,
                                  **dict(zip(summaries, _estimates(torch.stack(list(summaries.values()), 1)))))


@torch.no_grad()
def demographic_differentials(
    embeddings: torch.Tensor,
    identity: torch.Tensor,
    labels: Mapping[str, torch.Tensor],
    schema: AttributeSchema,
    tau: float | Verification,
    *,
    fmr: float | None = None,
    n_bootstrap: int = 200,
    seed: int = 0,
    bands: int = 4,
    min_pairs: int = 50,
    min_identities: int = 10,
    alpha: float = 0.5,
    scored: ScoredPairs | None = None,
) -> DemographicDifferentials:
    """FNMR and FMR of every group of every attribute of ``schema`` at the global threshold, with summaries.

    ``tau``: the global threshold, or the :class:`~frx_plugin.report.Verification` of these
    embeddings (its threshold and target FMR). ``fmr``: the target FMR that τ was set at (needed
    with a bare τ; it sets how many impostor pairs a group needs). ``labels``: name → (N,) labels on
    the CPU. ``scored``: the scores of the pass that set τ
    (:func:`~frx_plugin.verification.scored_verification`), reused instead of scoring every pair again.
    See the module docstring for the definitions, the too-small rules and the bootstrap.
    Raises :class:`AnalysisError` for bad input.
    """
    if isinstance(tau, Verification):
        fmr = tau.fmr if fmr is None else fmr
        tau = tau.threshold
    if fmr is None or not 0.0 < float(fmr) < 1.0:
        raise AnalysisError(f"fmr must be the target FMR in (0, 1) at which τ was set, got {fmr!r}")
    if not math.isfinite(float(tau)):
        raise AnalysisError(f"tau must be a finite threshold, got {tau!r}")
    if not 0.0 <= alpha <= 1.0 or n_bootstrap < 0 or min_pairs < 1 or min_identities < 1:
        raise AnalysisError("need 0 ≤ alpha ≤ 1, n_bootstrap ≥ 0, min_pairs ≥ 1 and min_identities ≥ 1")
    z, identity_on = prepare_embeddings(embeddings, identity)
    schema.validate(labels, z.shape[0], "demographic_differentials")
    groups = _groups(identity, labels, schema, bands, seed, n_bootstrap, z.device)
    counts = _counts(z, identity_on, groups, float(tau), scored)
    settings = {"fmr": float(fmr), "alpha": float(alpha), "min_pairs": int(min_pairs), "min_identities": int(min_identities)}
    results = [_attribute_result(attribute, names, spans, counts, columns, settings) for attribute, names, spans, columns in groups.layout]
    return DemographicDifferentials(tau=float(tau), fmr=float(fmr), alpha=float(alpha), n_bootstrap=int(n_bootstrap), seed=int(seed),
                                    min_pairs=int(min_pairs), min_identities=int(min_identities), attributes=results)
