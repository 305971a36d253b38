"""The result of one analysis pass, and its JSON record for history files."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch


def _clean(value: float | None) -> float | None:
    """JSON has no NaN: missing numbers are written as null."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None``, through dicts and lists (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


@dataclass
class AttributeLeakage:
    """Held-out recovery of one attribute from the embeddings (its leakage; see docs/architecture.md).

    ``metric`` names the headline value (``auroc`` for discrete kinds, ``r2``
    for continuous), ``value``/``low``/``high`` are it and its 95% bootstrap
    interval over identities; ``leakage`` and its bounds are the normalised ℓ
    in [0, 1]. ``extra`` holds further metrics (``balanced_accuracy`` for
    discrete kinds). A value that cannot be computed is NaN with ``reason``.
    """

    name: str
    kind: str
    group: str | None
    metric: str
    value: float
    low: float
    high: float
    leakage: float
    leakage_low: float
    leakage_high: float
    n: int
    extra: dict[str, float] = field(default_factory=dict)
    reason: str | None = None

    def to_record(self) -> dict[str, Any]:
        record = asdict(self)
        for key in ("value", "low", "high", "leakage", "leakage_low", "leakage_high"):
            record[key] = _clean(record[key])
        record["extra"] = {k: _clean(v) for k, v in self.extra.items()}
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> AttributeLeakage:
        data = dict(record)
        for key in ("value", "low", "high", "leakage", "leakage_low", "leakage_high"):
            data[key] = math.nan if data.get(key) is None else float(data[key])
        data["extra"] = {k: (math.nan if v is None else float(v)) for k, v in data.get("extra", {}).items()}
        return cls(**data)


@dataclass
class Verification:
    """Verification accuracy on all genuine and impostor pairs of the probe set."""

    tar: float
    fmr: float
    threshold: float
    genuine_pairs: int
    impostor_pairs: int

    def to_record(self) -> dict[str, Any]:
        return {k: _clean(v) if isinstance(v, float) else v for k, v in asdict(self).items()}


@dataclass
class Report:
    """One analysis pass: leakage per attribute, verification, and tensors for the history."""

    leakage: list[AttributeLeakage]
    n_samples: int
    n_identities: int
    n_folds: int
    verification: Verification | None = None
    epoch: int | None = None
    global_step: int | None = None
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    head: str = "ridge"
    #: identity significance S_k per attribute: {"value", "low", "high"}; empty if not measured
    significance: dict[str, dict[str, float | None]] = field(default_factory=dict)
    #: share of explained errors each attribute decides: {"all" | "false_non_match" | "false_match": {attribute: share}}
    error_attribution: dict[str, dict[str, float | None]] = field(default_factory=dict)
    #: how the counterfactuals were made: "exact" (a generator re-rendered the faces), "latent", or None
    counterfactuals: str | None = None
    #: the counterfactual study's size: ``{"rows", "error_pairs", "scaled"}`` (scaled to the probe set, or as
    #: given), or None without counterfactuals
    counterfactual_budget: dict[str, Any] | None = None
    #: the two-stage path (decoder, estimator, R_k of both paths, spread; see :mod:`frx_plugin.two_stage`), or None
    recovery: dict[str, Any] | None = None
    #: demographic differentials: FNMR and FMR per attribute group at the global τ, their ratios, FDR and
    #: GARBE with intervals (:meth:`frx_plugin.differentials.DemographicDifferentials.to_record`), or None
    differentials: dict[str, Any] | None = None
    #: the pass's cost in seconds: ``embed_s`` (probe data and forward pass), ``after_embed_s`` (leakage,
    #: verification), ``counterfactual_s`` and ``two_stage_s``; empty when not measured
    timing: dict[str, float] = field(default_factory=dict)
    #: the held-out metric of attributes reported NaN for too few samples of a class (``min_class_samples``):
    #: not part of the record; the latent counterfactuals still shrink by it, as before that rule
    unreported: dict[str, float] = field(default_factory=dict)

    def __getitem__(self, name: str) -> AttributeLeakage:
        for item in self.leakage:
            if item.name == name:
                return item
        raise KeyError(f"no attribute {name!r} in this report; it has {[a.name for a in self.leakage]}")

    def to_record(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "n_samples": self.n_samples,
            "n_identities": self.n_identities,
            "n_folds": self.n_folds,
            "verification": self.verification.to_record() if self.verification else None,
            "attributes": [a.to_record() for a in self.leakage],
            "warnings": list(self.warnings),
            "head": self.head,
            "counterfactuals": self.counterfactuals,
            "counterfactual_budget": self.counterfactual_budget,
            "significance": {k: {m: _clean(v) for m, v in d.items()} for k, d in self.significance.items()},
            "error_attribution": {k: {a: _clean(v) for a, v in d.items()} for k, d in self.error_attribution.items()},
            "recovery": json_safe(self.recovery),
            "differentials": json_safe(self.differentials),
            "timing": {k: _clean(v) for k, v in self.timing.items()},
        }

    @classmethod
    def from_record(cls, record: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None) -> Report:
        ver = record.get("verification")
        measures: dict[str, Any] = {k: (math.nan if v is None else v) for k, v in ver.items()} if ver else {}
        return cls(
            leakage=[AttributeLeakage.from_record(a) for a in record["attributes"]],
            n_samples=record["n_samples"],
            n_identities=record["n_identities"],
            n_folds=record["n_folds"],
            verification=Verification(**measures) if ver else None,
            epoch=record.get("epoch"),
            global_step=record.get("global_step"),
            tensors=dict(tensors or {}),
            warnings=list(record.get("warnings", [])),
            head=record.get("head", "ridge"),
            significance={k: {m: (math.nan if v is None else v) for m, v in d.items()} for k, d in record.get("significance", {}).items()},
            error_attribution={
                k: {a: (math.nan if v is None else v) for a, v in d.items()} for k, d in record.get("error_attribution", {}).items()
            },
            counterfactuals=record.get("counterfactuals"),
            counterfactual_budget=record.get("counterfactual_budget"),
            recovery=record.get("recovery"),
            differentials=record.get("differentials"),
            timing={k: (math.nan if v is None else v) for k, v in record.get("timing", {}).items()},
        )
