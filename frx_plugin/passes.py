"""The analysis pass: the one place that sequences what frx measures of a model on a probe set.

:func:`run_pass` is called by every training-loop adapter (Lightning, arcface_torch) and by the
commands alike, so a model and a probe set give the same record whoever runs the pass. It

1. embeds this process's shard of the probe set (rank, rank + W, …; no sample twice);
2. checks the shard (an exception, NaN or infinity) and lets every rank learn of a failure
   before the first collective, so one failing process skips the pass everywhere, never hangs;
3. streams the leakage statistics of the shard and sums them across processes;
4. gathers the embeddings and verifies (TAR at the FMR threshold; a probe set that lists its
   pairs, as a verification file does, on those pairs);
5. makes the counterfactuals (exact: a generator re-renders the faces, each process embedding
   its share; latent: along the probe heads) for identity significance and error attribution;
6. runs the two-stage path (decode z, read the attributes off the decoded faces) when given;
7. times each part (``embed_s``, ``after_embed_s``, ``counterfactual_s``, ``two_stage_s``);
8. applies the error policy (``on_error``) and fires ``frx_analysis_completed`` on rank 0.

The adapters decide only *when* a pass runs and *where* its numbers go.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from frx_plugin.counterfactual.measures import choose_counterfactual_path, counterfactual_embedder, counterfactual_measures
from frx_plugin.counterfactual.sharded import sharded_exact_embedder
from frx_plugin.collectives import Collectives, SingleProcess, gather_rows, metric_sync, shard_indices
from frx_plugin.errors import AnalysisError
from frx_plugin.leakage import analyze_embeddings
from frx_plugin.embedding_set import zero_rows_notice
from frx_plugin.model import ModelAdapter, embed_probe_set
from frx_plugin.plugins import get_plugin_manager
from frx_plugin.probe import ProbeSet
from frx_plugin.report import Report
from frx_plugin.two_stage.in_pass import prepare_two_stage, two_stage_part
from frx_plugin.verification import ScoredPairs, listed_pair_verification, scored_verification

ON_ERROR = ("warn", "raise")
#: Options of the counterfactual part of a pass.
COUNTERFACTUAL_PATHS = ("auto", "exact", "latent", "off")
#: The defaults of a pass's counterfactual study: probe rows whose counterfactuals give identity
#: significance, and errors of each kind explained. Chosen so that a default pass on the exact path
#: costs at most twice a pass without counterfactuals (benchmarks/pass_cost.py); a full study asks
#: for more (e.g. significance_samples=256, max_error_pairs=32).
SIGNIFICANCE_SAMPLES = 64
MAX_ERROR_PAIRS = 8
#: The keys of a pass's timing (seconds), logged as ``frx/time/<key>``.
TIMING_KEYS = ("embed_s", "after_embed_s", "counterfactual_s", "two_stage_s")

__all__ = [
    "AnalysisConfig", "COUNTERFACTUAL_PATHS", "MAX_ERROR_PAIRS", "ON_ERROR", "SIGNIFICANCE_SAMPLES", "PassPlan", "PassResult",
    "analyze_probe", "prepare_two_stage", "probe_differentials", "record_differentials", "run_pass", "scalar_metrics",
]


@dataclass(frozen=True)
class AnalysisConfig:
    """Options of the leakage and verification part of a pass (validated on construction)."""

    n_folds: int = 5
    n_bootstrap: int = 200
    seed: int = 0
    fmr: float = 1e-3
    batch_size: int = 256
    head: str = "ridge"
    C: float = 1.0
    min_class_samples: int = 20  # a discrete attribute with a class of fewer labelled samples gets no AUROC
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

    def __post_init__(self) -> None:
        from frx_plugin.leakage import HEADS

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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def check_positive(name: str, value: Any, allow_none: bool = False) -> None:
    """A ``ValueError`` naming the option unless ``value`` is a positive integer (or ``None``, where allowed)."""
    if allow_none and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer{' or None (off)' if allow_none else ''}, got {value!r}")


@dataclass(frozen=True)
class PassPlan:
    """What a pass measures. Make one with :meth:`for_probe`, which decides the counterfactual path once.

    ``counterfactuals``: the path decided ("exact", "latent") or ``None`` (off); ``generator``: the
    generator of the exact path; ``notices``: what the decision has to tell the user (a warning each).
    """

    config: AnalysisConfig = AnalysisConfig()
    counterfactuals: str | None = None
    generator: Any = None
    significance_samples: int = SIGNIFICANCE_SAMPLES
    max_error_pairs: int = MAX_ERROR_PAIRS
    on_error: str = "warn"
    notices: tuple[str, ...] = ()
    verification: bool = True  # False: leakage only (no verification, differentials or counterfactuals, which need its τ)

    def __post_init__(self) -> None:
        if not isinstance(self.config, AnalysisConfig):
            raise TypeError(f"config must be a frx_plugin.passes.AnalysisConfig, got {type(self.config).__name__}")
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {self.on_error!r}")
        if self.counterfactuals not in (None, "exact", "latent"):
            raise ValueError(f"counterfactuals must be 'exact', 'latent' or None, got {self.counterfactuals!r}")
        if self.counterfactuals == "exact" and self.generator is None:
            raise ValueError("the exact counterfactual path needs a generator")
        if not self.verification and self.counterfactuals is not None:
            raise ValueError("counterfactuals need the verification threshold: a plan without verification has none")
        check_positive("significance_samples", self.significance_samples)
        check_positive("max_error_pairs", self.max_error_pairs)

    @classmethod
    def for_probe(cls, probe: ProbeSet, *, config: AnalysisConfig = AnalysisConfig(), counterfactuals: str = "auto",
                  significance_samples: int = SIGNIFICANCE_SAMPLES, max_error_pairs: int = MAX_ERROR_PAIRS, on_error: str = "warn",
                  verification: bool = True) -> "PassPlan":
        """The plan for ``probe``. ``counterfactuals``: "auto" (exact when a registered generator can
        render the probe set, latent otherwise, with a notice), "exact" (an error now if none can),
        "latent" or "off"."""
        if counterfactuals not in COUNTERFACTUAL_PATHS:
            raise ValueError(f"counterfactuals must be one of {COUNTERFACTUAL_PATHS}, got {counterfactuals!r}")
        path, generator, notices = None, None, ()
        if counterfactuals != "off":
            path, generator = choose_counterfactual_path(probe, counterfactuals)
            if counterfactuals == "auto" and path == "latent":
                notices = (
                    f"no generator (hook frx_register_generators) can render {probe.source}; identity significance and "
                    "error attribution use the latent path (pass counterfactuals='exact' to require a generator, 'off' to skip)",
                )
        return cls(config=config, counterfactuals=path, generator=generator, significance_samples=significance_samples,
                   max_error_pairs=max_error_pairs, on_error=on_error, notices=notices, verification=verification)


@dataclass
class PassResult:
    """What a pass gave: its ``report`` (``None`` when it failed), the ``failure`` message, ``timing`` in
    seconds (:data:`TIMING_KEYS`), and ``decoded`` — (originals, decoded faces, their identity
    similarity) of the two-stage path for figures, or ``None``."""

    report: Report | None
    failure: str | None = None
    timing: dict[str, float] = field(default_factory=dict)
    decoded: tuple | None = None

    @property
    def ok(self) -> bool:
        return self.report is not None


# --------------------------------------------------------------------------- parts of the pass


def probe_leakage(embeddings: torch.Tensor, probe: ProbeSet, config: AnalysisConfig = AnalysisConfig(),
                  indices: torch.Tensor | None = None, collectives: Collectives | None = None) -> Report:
    """Leakage of every attribute of ``probe`` from the embeddings of the samples ``indices`` (default all).

    Ridge heads stream: each process passes its own disjoint shard and the statistics are summed
    through ``collectives``, so every process gets the result of the whole probe set (every process
    must call this: it runs collectives). Logistic heads (``config.head == "logistic"``) are fitted
    on all the embeddings at once: pass all of them (every process alike).
    """
    from frx_plugin.leakage.streaming import analyze_stream

    if config.head == "logistic":
        if indices is not None and indices.numel() != len(probe):
            raise AnalysisError("logistic heads are fitted on the whole probe set: gather the embeddings first")
        return analyze_embeddings(embeddings, probe.identity, probe.labels, probe.schema, n_folds=config.n_folds,
                                  n_bootstrap=config.n_bootstrap, seed=config.seed, head="logistic", C=float(config.C))
    if indices is None:
        indices = torch.arange(len(probe), device="cpu")
    distributed = collectives is not None and collectives.world_size > 1
    labels = {name: value[indices] for name, value in probe.labels.items()}
    masked = [a.name for a in probe.schema if bool(a.missing_mask(probe.labels[a.name]).any())]
    return analyze_stream(
        lambda: [(embeddings, probe.identity[indices], labels)],
        probe.identity,
        probe.schema,
        n_folds=config.n_folds,
        n_bootstrap=config.n_bootstrap,
        seed=config.seed,
        sync_on_compute=distributed,
        masked_attributes=masked,
        dist_sync_fn=metric_sync(collectives) if distributed else None,
        min_class_samples=config.min_class_samples,
    )


def probe_verification(embeddings: torch.Tensor, probe: ProbeSet, fmr: float, keep_pairs: bool = False):
    """(verification, the scores of its pass or ``None``): on the probe set's listed pairs (``probe.pairs``,
    a verification file), else on all pairs, where ``keep_pairs`` keeps the scores that the
    differentials at its τ reuse (:func:`~frx_plugin.verification.scored_verification`)."""
    listed = getattr(probe, "pairs", None)
    if listed is not None:
        return listed_pair_verification(embeddings, probe.identity, listed, fmr=fmr), None
    return scored_verification(embeddings, probe.identity, fmr=fmr, keep_pairs=keep_pairs)


def verify_probe(embeddings: torch.Tensor, probe: ProbeSet, report: Report, config: AnalysisConfig, on_error: str = "raise") -> None:
    """``report.verification`` and, with ``config.differentials``, ``report.differentials`` from the same scoring pass."""
    report.verification, scored = probe_verification(embeddings, probe, config.fmr, keep_pairs=config.differentials)
    probe_differentials(embeddings, probe, report, config, on_error, scored)


def probe_differentials(embeddings: torch.Tensor, probe: ProbeSet, report: Report, config: AnalysisConfig,
                        on_error: str = "raise", scored: ScoredPairs | None = None) -> None:
    """``report.differentials`` at the report's verification threshold (every pair of the probe set).

    Skipped, with a warning in the report, for a probe set that lists its pairs (the rates would mix
    its listed pairs' τ with all pairs) or has no attribute; see :func:`record_differentials` for failures.
    """
    if not config.differentials or report.verification is None or len(probe.schema) == 0:
        return
    if getattr(probe, "pairs", None) is not None:
        report.warnings.append("demographic differentials skipped: the probe set lists its pairs (they need every pair)")
        return
    record_differentials(embeddings, probe.identity, probe.labels, probe.schema, report, config, on_error, scored)


def record_differentials(embeddings: torch.Tensor, identity: torch.Tensor, labels: Any, schema: Any, report: Report,
                         config: AnalysisConfig, on_error: str = "raise", scored: ScoredPairs | None = None) -> None:
    """``report.differentials`` of these embeddings at ``report.verification``'s τ; with ``config.differential_curves``
    also ``"curves"``: the DET data of the most unequal attribute. ``scored``: the scores of the
    verification's pass, reused (else the differentials score every pair themselves).

    Data that allows none (an :class:`AnalysisError`) is a warning in the report; any other failure
    is raised with ``on_error="raise"``, else a warning too: the pass's leakage and verification stand.
    """
    from frx_plugin.differentials import demographic_differentials, group_score_curves

    try:
        result = demographic_differentials(
            embeddings, identity, labels, schema, report.verification, n_bootstrap=config.n_bootstrap, seed=config.seed,
            bands=config.differential_bands, min_pairs=config.differential_min_pairs,
            min_identities=config.differential_min_identities, scored=scored,
        )
        record = result.to_record()
        worst = result.most_unequal()
        if config.differential_curves and worst is not None:
            record["curves"] = group_score_curves(embeddings, identity, labels[worst], schema[worst],
                                                  bands=config.differential_bands).to_record()
    except Exception as exc:  # noqa: BLE001 - the pass's other measures stand
        if on_error == "raise" and not isinstance(exc, AnalysisError):
            raise
        report.warnings.append(f"demographic differentials skipped: {type(exc).__name__}: {exc}")
        return
    report.differentials = record


def analyze_probe(embeddings: torch.Tensor, probe: ProbeSet, config: AnalysisConfig = AnalysisConfig()) -> Report:
    """Leakage of every attribute of ``probe``, verification and demographic differentials, from the
    embeddings of all its samples (one process).

    A probe set that lists its pairs (``probe.pairs``, as a verification file does) is verified on
    those pairs only; otherwise on all pairs.
    """
    report = probe_leakage(embeddings, probe, config)
    verify_probe(embeddings, probe, report, config)
    return report


def _diverged_parameters(model: ModelAdapter) -> str | None:
    """The first parameter holding NaN or infinity (a diverged run, noticed before any image is embedded)."""
    module = model.module
    named = getattr(module, "named_parameters", None)
    for name, value in (named() if callable(named) else ()):
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return name
    return None


def _embed_shard(model: ModelAdapter, probe: ProbeSet, indices: torch.Tensor, batch_size: int,
                 progress: Any = None) -> tuple[torch.Tensor, BaseException | None]:
    """This process's embeddings and what went wrong (an exception, or NaN/infinity), never raised here.

    A model whose parameters hold NaN, or whose batch embeds to NaN, stops at once: the rest of the
    probe set is not embedded.
    """
    bad_parameter = _diverged_parameters(model)
    if bad_parameter is not None:
        return torch.empty(0, 0, device="cpu"), AnalysisError(
            f"the model's parameter {bad_parameter!r} holds NaN or infinity — did the training diverge?")
    try:
        local = embed_probe_set(model, probe, indices, batch_size, progress=progress, check=True)
    except Exception as exc:  # noqa: BLE001 - every rank learns of it before the first collective
        return torch.empty(0, 0, device="cpu"), exc
    bad = int((~torch.isfinite(local).all(1)).sum()) if local.numel() else 0
    if bad:
        return local, AnalysisError(
            f"embeddings contain NaN or infinity in {bad} of the first {local.shape[0]} of this process's "
            f"{indices.numel()} probe rows — did the training diverge?"
        )
    return local, None


def _given_shard(embeddings: torch.Tensor, probe: ProbeSet, indices: torch.Tensor) -> tuple[torch.Tensor, BaseException | None]:
    """This process's rows of embeddings given to the pass (already embedded: an embedding file's, or by the caller),
    and what is wrong with them (a shape that is not one row per probe sample, NaN or infinity), never raised here."""
    what = f"the embeddings of {probe.source}"
    if not isinstance(embeddings, torch.Tensor) or embeddings.ndim != 2 or embeddings.shape[0] != len(probe) or embeddings.shape[1] < 1:
        shape = tuple(embeddings.shape) if isinstance(embeddings, torch.Tensor) else type(embeddings).__name__
        return torch.empty(0, 0, device="cpu"), AnalysisError(
            f"{what} must be a tensor of one row per probe sample ({len(probe)}) and at least one column, got {shape}")
    local = embeddings[indices.to(embeddings.device)].float()
    bad = int((~torch.isfinite(local).all(1)).sum())
    if bad:
        first = int((~torch.isfinite(local).all(1)).nonzero()[0])
        return local, AnalysisError(f"{what} contain NaN or infinity in {bad} of {local.shape[0]} rows (first: row "
                                    f"{int(indices[first])}); the pass refuses them")
    return local, None


def _counterfactuals(model: Any, probe: ProbeSet, embeddings: torch.Tensor, report: Report, plan: PassPlan,
                     collectives: Collectives) -> None:
    """Identity significance and error attribution (every rank, same inputs, same collectives)."""
    embed, attributes, unchanged = counterfactual_embedder(
        model, embeddings, probe.labels, probe.schema, report, plan.counterfactuals, generator=plan.generator, probe=probe,
        batch_size=plan.config.batch_size,
    )
    if plan.counterfactuals == "exact":
        if unchanged:
            report.warnings.append(f"counterfactuals: the generator cannot change {unchanged}; they are left out")
        embed = sharded_exact_embedder(model, plan.generator, plan.config.batch_size, collectives, embeddings.shape[1],
                                       embeddings.device)
    try:
        counterfactual_measures(
            embeddings, probe, report, plan.config, embed, path=plan.counterfactuals,
            significance_samples=plan.significance_samples, max_error_pairs=plan.max_error_pairs, attributes=attributes,
        )
    except Exception as exc:  # noqa: BLE001 - leakage and verification of the pass still count
        # data that allows no counterfactual (too few impostor pairs for τ, …) is a warning; any other
        # failure follows on_error. Both happen on every rank alike (the inputs are the same everywhere).
        if plan.on_error == "raise" and not isinstance(exc, AnalysisError):
            raise
        report.warnings.append(f"counterfactuals skipped: {type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------- the pass


def run_pass(model: Any, probe: ProbeSet, plan: PassPlan = PassPlan(), collectives: Collectives | None = None, *,
             two_stage: Any = None, context: dict[str, Any] | None = None, progress: Any = None,
             embeddings: torch.Tensor | None = None) -> PassResult:
    """One analysis pass of ``model`` on ``probe`` (see the module); every process of the run must call it alike.

    ``collectives``: how the processes exchange (default one process, on the model's device);
    ``two_stage``: a :class:`~frx_plugin.two_stage.TwoStage` to run the paper's two stages in this
    pass, or ``None``; ``context``: what ``frx_analysis_completed`` receives beside the report
    (framework, epoch, global step, out_dir, …). A failure follows ``plan.on_error``: "raise"
    raises it (on every rank), "warn" returns a result without report whose ``failure`` says why.
    ``progress(done, total, "embedding")`` after each embedded batch when given. ``embeddings``: the
    probe set's rows already embedded (N×D, used as they are, checked as the model's are), so that
    ``model`` embeds nothing; it may then be ``None`` (an embedding file's rows: no counterfactual
    needs the model on the latent path). ``plan.verification`` false: leakage only.
    """
    model = ModelAdapter.wrap(model) if model is not None else None
    device = model.device if model is not None else (embeddings.device if isinstance(embeddings, torch.Tensor) else torch.device("cpu"))
    collectives = collectives or SingleProcess(device)
    timing = dict.fromkeys(TIMING_KEYS, 0.0)
    given = embeddings is not None

    def now() -> float:  # the GPU's queued work done first, so each part is timed with its own kernels
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    try:
        started = now()
        indices = shard_indices(collectives, len(probe))
        if given:
            local, problem = _given_shard(embeddings, probe, indices)
        else:
            local, problem = _embed_shard(model, probe, indices, plan.config.batch_size, progress)
        if collectives.any(problem is not None):
            raise problem or AnalysisError("the analysis pass failed on another process; it is skipped on every process")
        embedded = now()
        if plan.config.head == "logistic":  # exact logistic heads see every row at once
            embeddings = gather_rows(collectives, local, len(probe))
            report = probe_leakage(embeddings, probe, plan.config)
        else:
            report = probe_leakage(local, probe, plan.config, indices, collectives)
            embeddings = gather_rows(collectives, local, len(probe))  # verification compares every pair
        empty = (embeddings == 0).all(1)
        if bool(empty.any()):  # the same on every rank: every rank holds every embedding
            first = int(empty.nonzero()[0])
            what = probe.source if given else f"the model's embeddings of {probe.source}"
            report.warnings.append(zero_rows_notice(int(empty.sum()), len(probe), first, what))
        if plan.verification:  # the same on every rank: all embeddings everywhere
            verify_probe(embeddings, probe, report, plan.config, plan.on_error)
        if plan.counterfactuals is not None:
            start = now()
            _counterfactuals(model, probe, embeddings, report, plan, collectives)
            timing["counterfactual_s"] = now() - start
        decoded = None
        if two_stage is not None:
            start = now()
            # the decoders train where the model is, from the embeddings on the host (as their images are)
            decoded = two_stage_part(model, embeddings.cpu(), report, two_stage, plan.on_error, collectives)
            timing["two_stage_s"] = now() - start
        timing["embed_s"] = embedded - started
        timing["after_embed_s"] = now() - embedded - timing["counterfactual_s"] - timing["two_stage_s"]
        report.timing = dict(timing)
    except Exception as exc:
        if plan.on_error == "raise":
            raise
        return PassResult(report=None, failure=f"{type(exc).__name__}: {exc}", timing=timing)
    if collectives.rank == 0:
        try:
            get_plugin_manager().hook.frx_analysis_completed(report=report, context=dict(context or {}))
        except Exception as exc:  # a sink that fails never costs the pass (nor the training), unless asked
            if plan.on_error == "raise":
                raise
            report.warnings.append(f"a frx_analysis_completed hook failed: {type(exc).__name__}: {exc}")
    return PassResult(report=report, timing=timing, decoded=decoded)


def scalar_metrics(report: Report) -> dict[str, float]:
    """The report's numbers under the names loggers use.

    ``frx/leakage/<attribute>`` (with ``/low`` and ``/high``), ``frx/<metric>/<attribute>``,
    ``frx/verification/tar_at_fmr_<fmr>``, ``frx/significance/<attribute>``, ``frx/errors/…``,
    ``frx/differential/<attribute>/{fnmr_ratio, fmr_ratio, fdr, garbe}``,
    the two-stage path's ``frx/recovery/…`` and the pass's cost ``frx/time/<part>_s``.
    """
    out: dict[str, float] = {}
    for item in report.leakage:
        out[f"frx/leakage/{item.name}"] = item.leakage
        out[f"frx/leakage/{item.name}/low"] = item.leakage_low
        out[f"frx/leakage/{item.name}/high"] = item.leakage_high
        out[f"frx/{item.metric}/{item.name}"] = item.value
    if report.verification is not None:
        out[f"frx/verification/tar_at_fmr_{report.verification.fmr:g}"] = report.verification.tar
    for name, estimate in report.significance.items():
        out[f"frx/significance/{name}"] = estimate["value"]
        out[f"frx/significance/{name}/low"] = estimate["low"]
        out[f"frx/significance/{name}/high"] = estimate["high"]
    for kind, shares in report.error_attribution.items():
        prefix = "frx/errors" if kind == "all" else f"frx/errors/{kind}"
        for name, share in shares.items():
            out[f"{prefix}/{name}"] = share
    for item in (report.differentials or {}).get("attributes", []):
        for summary in ("fnmr_ratio", "fmr_ratio", "fdr", "garbe"):
            estimate = item.get(summary) or {}
            out[f"frx/differential/{item['name']}/{summary}"] = estimate.get("value")
    if report.recovery is not None:
        from frx_plugin.two_stage import recovery_scalars

        out.update(recovery_scalars(report.recovery))
    for key, seconds in report.timing.items():
        out[f"frx/time/{key}"] = seconds
    return {k: float(v) for k, v in out.items() if v is not None and not math.isnan(float(v))}
