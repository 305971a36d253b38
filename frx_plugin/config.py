"""The options of an analysis pass and of the model contract, validated once, where they are made.

- :class:`AnalysisConfig`: what a pass measures and how (folds, bootstrap, FMR, heads, differentials,
  counterfactuals and their budget); every field reachable from every loop and command.
- :class:`PassPlan`: the options of one run once the probe set is known: the counterfactual path
  decided (exact, latent or off), its generator, the error policy and what the decision has to tell.

A leaf of the package: it imports nothing of frx.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

ON_ERROR = ("warn", "raise")
#: Options of the counterfactual part of a pass.
COUNTERFACTUAL_PATHS = ("auto", "exact", "decoded", "latent", "off")
#: The most probe rows whose counterfactuals give identity significance, and errors of each kind explained,
#: in a default pass. On the exact path a pass makes at most 0.75 changed faces per probe image
#: (:func:`frx_plugin.counterfactual.budget.counterfactual_budget`), so its counterfactuals cost at most
#: about 0.75 of an embedding of the probe set: under twice a pass without them, whatever the probe's size
#: and the model (benchmarks/pass_cost.py). A full study asks for more (significance_samples=256, max_error_pairs=32).
SIGNIFICANCE_SAMPLES = 64
MAX_ERROR_PAIRS = 8
#: The probe heads: ridge (closed form from streamed statistics) and exact logistic.
HEADS = ("ridge", "logistic")
#: The keys of a pass's timing (seconds), logged as ``frx/time/<key>``.
TIMING_KEYS = ("embed_s", "after_embed_s", "counterfactual_s", "two_stage_s")

__all__ = [
    "AnalysisConfig", "COUNTERFACTUAL_PATHS", "HEADS", "MAX_ERROR_PAIRS", "ON_ERROR", "PassPlan", "SIGNIFICANCE_SAMPLES",
    "TIMING_KEYS", "check_positive",
]


def check_positive(name: str, value: Any, allow_none: bool = False) -> None:
    """A ``ValueError`` naming the option unless ``value`` is a positive integer (or ``None``, where allowed)."""
    if allow_none and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer{' or None (off)' if allow_none else ''}, got {value!r}")


@dataclass(frozen=True)
class AnalysisConfig:
    """Options of an analysis pass (validated on construction).

    Leakage and verification: ``n_folds`` identity-disjoint folds, ``n_bootstrap`` replicates over
    identities, ``seed``, ``fmr`` (the verification threshold's false-match rate), ``batch_size``
    images embedded at once, ``head`` ("ridge" or "logistic") with ``C`` (the logistic penalty's
    inverse), ``min_class_samples`` (a discrete attribute with a class of fewer labelled samples gets no
    AUROC). Demographic differentials: see the fields' comments. Counterfactuals: ``counterfactuals``
    ("auto": exact where a registered generator renders the probe set, latent otherwise; "exact",
    "latent", "off"), ``significance_samples`` probe rows whose changed faces give identity significance
    and ``max_error_pairs`` errors of each kind explained — ``None`` (default): scaled to the probe set so
    that the counterfactuals cost about one embedding of it (at most 64 rows and 8 pairs).
    """

    n_folds: int = 5
    n_bootstrap: int = 200
    seed: int = 0
    fmr: float = 1e-3
    batch_size: int = 256
    head: str = "ridge"
    C: float = 1.0
    min_class_samples: int = 20
    #: demographic differentials (error rates per attribute group at the global τ) in the pass; continuous
    #: attributes in ``differential_bands`` quantile bands; a group needs ``differential_min_pairs`` pairs from
    #: ``differential_min_identities`` identities for a rate. They reuse the verification's scores
    #: (about 0.16 s more at 10,000 probe images on 2 CPU cores, cProfile of run_pass), so they run in every pass by default
    differentials: bool = True
    differential_bands: int = 4
    differential_min_pairs: int = 50
    differential_min_identities: int = 10
    #: the per-group DET curves of the most unequal attribute in the record (one more pass over all pairs)
    differential_curves: bool = False
    counterfactuals: str = "auto"
    significance_samples: int | None = None
    max_error_pairs: int | None = None

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {list(HEADS)}, got {self.head!r}")
        if not isinstance(self.C, (int, float)) or isinstance(self.C, bool) or not (0.0 < float(self.C) < math.inf):
            raise ValueError(f"C (the inverse logistic penalty) must be a positive number, got {self.C!r}")
        if not isinstance(self.n_folds, int) or self.n_folds < 2:
            raise ValueError(f"n_folds must be an integer of at least 2, got {self.n_folds!r}")
        if not isinstance(self.n_bootstrap, int) or self.n_bootstrap < 0:
            raise ValueError(f"n_bootstrap must be a non-negative integer, got {self.n_bootstrap!r}")
        if not (isinstance(self.fmr, float) and 0.0 < self.fmr < 1.0):
            raise ValueError(f"fmr must be a float in (0, 1), got {self.fmr!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not isinstance(self.min_class_samples, int) or isinstance(self.min_class_samples, bool) or self.min_class_samples < 0:
            raise ValueError(f"min_class_samples must be a non-negative integer, got {self.min_class_samples!r}")
        for flag in ("differentials", "differential_curves"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag} must be True or False, got {getattr(self, flag)!r}")
        check_positive("differential_bands", self.differential_bands)
        check_positive("differential_min_pairs", self.differential_min_pairs)
        check_positive("differential_min_identities", self.differential_min_identities)
        if self.counterfactuals not in COUNTERFACTUAL_PATHS:
            raise ValueError(f"counterfactuals must be one of {COUNTERFACTUAL_PATHS}, got {self.counterfactuals!r}")
        check_positive("significance_samples", self.significance_samples, allow_none=True)
        check_positive("max_error_pairs", self.max_error_pairs, allow_none=True)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def updated(self, **fields: Any) -> AnalysisConfig:
        """A copy with ``fields`` changed (those given as ``None`` are left as they are), validated again;
        a name that is not a field is a ``TypeError`` naming it and the fields."""
        unknown = sorted(set(fields) - set(self.__dataclass_fields__))
        if unknown:
            raise TypeError(f"unknown analysis option(s) {unknown}; AnalysisConfig has {sorted(self.__dataclass_fields__)}")
        given = {k: v for k, v in fields.items() if v is not None}
        return replace(self, **given) if given else self


@dataclass(frozen=True)
class PassPlan:
    """What a pass measures, once the probe set is known (make one with :func:`frx_plugin.passes.plan_pass`).

    ``counterfactuals``: the path decided ("exact", "decoded", "latent") or ``None`` (off); ``generator``: the
    generator of the exact path; ``on_error``: "warn" (a failed pass is reported and skipped) or "raise";
    ``notices``: what the decision has to tell the user (a warning each).
    """

    config: AnalysisConfig = AnalysisConfig()
    counterfactuals: str | None = None
    generator: Any = None
    on_error: str = "warn"
    notices: tuple[str, ...] = field(default=())
    #: False: leakage only (no verification, differentials or counterfactuals, which need its τ)
    verification: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.config, AnalysisConfig):
            raise TypeError(f"config must be a frx_plugin.config.AnalysisConfig, got {type(self.config).__name__}")
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {self.on_error!r}")
        if self.counterfactuals not in (None, "exact", "decoded", "latent"):
            raise ValueError(f"counterfactuals must be 'exact', 'decoded', 'latent' or None, got {self.counterfactuals!r}")
        if self.counterfactuals == "exact" and self.generator is None:
            raise ValueError("the exact counterfactual path needs a generator")
        if not self.verification and self.counterfactuals is not None:
            raise ValueError("counterfactuals need the verification threshold: a plan without verification has none")

    @property
    def significance_samples(self) -> int | None:
        return self.config.significance_samples

    @property
    def max_error_pairs(self) -> int | None:
        return self.config.max_error_pairs
