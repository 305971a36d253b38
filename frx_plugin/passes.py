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
   its share; latent: along the probe heads) for identity significance and error attribution, as
   many as the plan asks or as its budget scaled to the probe set allows;
6. runs the two-stage path (decode z, read the attributes off the decoded faces) when given;
7. times each part (``embed_s``, ``after_embed_s``, ``counterfactual_s``, ``two_stage_s``);
8. applies the error policy (``on_error``) and fires ``frx_analysis_completed`` on rank 0 (a
   training loop's :class:`~frx_plugin.loop.AnalysisLoop` fires it itself, after the history is written).

The loops decide only *when* a pass runs and *where* its numbers go (:mod:`frx_plugin.loop`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from frx_plugin.collectives import Collectives, SingleProcess, gather_rows, metric_sync, shard_indices
from frx_plugin.config import TIMING_KEYS, AnalysisConfig, PassPlan
from frx_plugin.counterfactual.budget import counterfactual_budget
from frx_plugin.counterfactual.measures import choose_counterfactual_path, counterfactual_embedder, counterfactual_measures
from frx_plugin.embedding_set import zero_rows_notice
from frx_plugin.errors import AnalysisError
from frx_plugin.leakage import analyze_embeddings
from frx_plugin.model import ModelAdapter, embed_probe_set, saved_rank_buffers
from frx_plugin.plugins import get_plugin_manager
from frx_plugin.probe import ProbeSet
from frx_plugin.report import Report
from frx_plugin.two_stage.in_pass import prepare_two_stage, two_stage_part
from frx_plugin.verification import ScoredPairs, listed_pair_verification, scored_verification

__all__ = [
    "AnalysisConfig", "PassPlan", "PassResult", "analyze_probe", "announce_pass", "plan_pass", "prepare_two_stage",
    "probe_differentials", "record_differentials", "run_pass",
]


def plan_pass(probe: ProbeSet, config: AnalysisConfig = AnalysisConfig(), *, on_error: str = "warn",
              counterfactuals: str | None = None, significance_samples: int | None = None,
              max_error_pairs: int | None = None, verification: bool = True, decoder: bool = False) -> PassPlan:
    """The plan of a run's passes over ``probe``: the counterfactual path decided once.

    ``config.counterfactuals`` (or ``counterfactuals``, which overrides it, as ``significance_samples``
    and ``max_error_pairs`` override the config's): "auto" (exact when a registered generator can
    render the probe set; else decoded where the run trains decoders, ``decoder`` true; else latent, with a
    notice), "exact" (an error now if none can), "decoded" (an error now without a decoder), "latent" or
    "off". The decoded path renders with the decoders a pass trains: a pass that trains none (the two stages
    run every M passes) uses the latent path, and its report says so. ``verification`` false: leakage only.
    """
    config = config.updated(counterfactuals=counterfactuals, significance_samples=significance_samples,
                            max_error_pairs=max_error_pairs)
    notices: tuple[str, ...]
    path, generator, notices = None, None, ()
    if config.counterfactuals != "off":
        path, generator = choose_counterfactual_path(probe, config.counterfactuals, decoder)
        if config.counterfactuals == "auto" and path == "latent":
            notices = (
                f"no generator (hook frx_register_generators) can render {probe.source}; identity significance and "
                "error attribution use the latent path (pass counterfactuals='exact' to require a generator, 'off' to skip)",
            )
        elif path == "decoded":
            notices = (
                f"identity significance and error attribution of {probe.source} use decoded counterfactuals: the two stages' "
                "decoders render each face with one attribute edited in their latent space and the model re-embeds it, on "
                "the passes that train the decoders; the other passes use the latent path (counterfactuals='latent' for "
                "all, 'off' to skip)",
            )
    return PassPlan(config=config, counterfactuals=path, generator=generator, on_error=on_error, notices=notices,
                    verification=verification)


@dataclass
class PassResult:
    """What a pass gave: its ``report`` (``None`` when it failed), the ``failure`` message, ``timing`` in
    seconds (:data:`TIMING_KEYS`), ``decoded`` — (originals, decoded faces, their identity
    similarity) of the two-stage path for figures, or ``None`` — and ``strips``, the decoded
    counterfactuals of a few explained errors for figures, or ``None``."""

    report: Report | None
    failure: str | None = None
    timing: dict[str, float] = field(default_factory=dict)
    decoded: tuple | None = None
    #: the decoded counterfactuals' figure rows (:func:`frx_plugin.figures.plot_counterfactuals`), global-zero only
    strips: list | None = None

    @property
    def ok(self) -> bool:
        return self.report is not None

    @property
    def completed(self) -> Report:
        """The report of a pass that ran to the end (a pass with ``on_error="raise"`` that returns did)."""
        if self.report is None:
            raise AnalysisError(f"the analysis pass failed: {self.failure}")
        return self.report


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
        dist_sync_fn=metric_sync(collectives) if distributed and collectives is not None else None,
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
        if report.verification is None:
            raise AnalysisError("demographic differentials need the pass's verification (its threshold) first")
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


def _decoded_problem(two_stage: Any, report: Report) -> str | None:
    """Why this process's decoders cannot render the decoded counterfactuals of this pass, or ``None``: the two stages
    failed, or a decoder without a latent space to edit."""
    from frx_plugin.counterfactual.decoded import is_editable

    if report.recovery is None:
        return "the two stages failed in this pass"
    fresh: set[int] = getattr(two_stage, "fresh_folds", set())
    awkward = [fold for fold in sorted(fresh) if not is_editable(two_stage.decoders[fold])]
    if awkward:
        return (f"decoder {two_stage.config.decoder!r} offers no latent space to edit (latent(z) and render_latent(codes); "
                "the built-in conv and stylegan2 decoders have them)")
    return None


def _counterfactuals(model: Any, probe: ProbeSet, embeddings: torch.Tensor, report: Report, plan: PassPlan,
                     collectives: Collectives, two_stage: Any = None) -> list | None:
    """Identity significance and error attribution (every rank, same inputs, same collectives).

    The study's size is the plan's, or scaled to the probe set (:func:`~frx_plugin.counterfactual.budget.counterfactual_budget`).
    ``two_stage``: the two stages whose decoders this pass trained (the decoded path), or ``None``; without
    them a decoded plan takes the latent path in this pass (with a warning when the decoders failed).
    Returns the decoded path's figure rows on the global-zero process (``PassResult.strips``), else ``None``.
    """
    assert plan.counterfactuals is not None  # run_pass calls this only when the plan has a counterfactual path
    path = plan.counterfactuals
    if path == "decoded" and two_stage is None:
        path = "latent"  # no decoder fit in this pass (the two stages run every M passes): the plan's notice says so
    elif path == "decoded":
        problem = _decoded_problem(two_stage, report)
        rendered = collectives.any(bool(getattr(two_stage, "fresh_folds", ())))  # any process with a decoder trained here
        if problem is None and not rendered:
            problem = "every decoder of this pass failed (diverged)"
        if collectives.any(problem is not None):  # every rank takes the same path (both collectives run on every rank)
            path = "latent"
            report.warnings.append(f"decoded counterfactuals: {problem or 'no decoder rendered on another process'}; the latent path was used")
    embed, attributes, unchanged = counterfactual_embedder(
        model, embeddings, probe.labels, probe.schema, report, path, generator=plan.generator, probe=probe,
        batch_size=plan.config.batch_size, collectives=collectives, two_stage=two_stage, seed=plan.config.seed,
    )
    if unchanged:
        report.warnings.append(f"counterfactuals: the generator cannot change {unchanged}; they are left out")
    changed = len(probe.schema) if attributes is None else len(attributes)
    budget = counterfactual_budget(len(probe), changed, path, plan.significance_samples, plan.max_error_pairs)
    report.counterfactual_budget = budget.to_record()
    try:
        explanations = counterfactual_measures(
            embeddings, probe, report, plan.config, embed, path=path,
            significance_samples=budget.rows, max_error_pairs=budget.error_pairs, attributes=attributes,
        )
    except Exception as exc:  # noqa: BLE001 - leakage and verification of the pass still count
        # data that allows no counterfactual (too few impostor pairs for τ, …) is a warning; any other
        # failure follows on_error. Both happen on every rank alike (the inputs are the same everywhere).
        if plan.on_error == "raise" and not isinstance(exc, AnalysisError):
            raise
        report.warnings.append(f"counterfactuals skipped: {type(exc).__name__}: {exc}")
        return None
    if path != "decoded" or collectives.rank != 0 or not explanations:
        return None
    try:  # the strip renders a few faces on this process alone (no collective): it never costs the pass
        return embed.strip_rows(explanations, probe)
    except Exception as exc:  # noqa: BLE001
        report.warnings.append(f"counterfactual strip not made: {type(exc).__name__}: {exc}")
        return None


# --------------------------------------------------------------------------- the pass


def run_pass(model: Any, probe: ProbeSet, plan: PassPlan = PassPlan(), collectives: Collectives | None = None, *,
             two_stage: Any = None, context: dict[str, Any] | None = None, progress: Any = None,
             announce: bool = True, embeddings: torch.Tensor | None = None) -> PassResult:
    """One analysis pass of ``model`` on ``probe`` (see the module); every process of the run must call it alike.

    ``collectives``: how the processes exchange (default one process, on the model's device);
    ``two_stage``: a :class:`~frx_plugin.two_stage.TwoStage` to run the paper's two stages in this
    pass, or ``None``; ``context``: what ``frx_analysis_completed`` receives beside the report
    (framework, epoch, global step, out_dir, …). A failure follows ``plan.on_error``: "raise"
    raises it (on every rank), "warn" returns a result without report whose ``failure`` says why.
    ``progress(done, total, "embedding")`` after each embedded batch when given. ``announce``: fire
    ``frx_analysis_completed`` at the end (a training loop says ``False`` and fires it itself, after it
    has written the pass's history: :func:`announce_pass`). ``embeddings``: the probe set's rows already
    embedded (N×D, used as they are, checked as the model's are), so that ``model`` embeds nothing; it may
    then be ``None`` (an embedding file's rows: no counterfactual needs the model on the latent path).
    ``plan.verification`` false: leakage only.

    Every rank embeds with rank 0's floating buffers (BatchNorm statistics), the model the loops save,
    and gets its own back after the pass (:func:`~frx_plugin.model.saved_rank_buffers`).
    """
    model = ModelAdapter.wrap(model) if model is not None else None
    device = model.device if model is not None else (embeddings.device if isinstance(embeddings, torch.Tensor) else torch.device("cpu"))
    collectives = collectives or SingleProcess(device)
    if model is None:
        return _sequence_pass(model, probe, plan, collectives, two_stage, context, progress, announce, embeddings, device)
    with saved_rank_buffers(model.module, collectives, lambda message: model.warn_once("rank buffers", message)):
        return _sequence_pass(model, probe, plan, collectives, two_stage, context, progress, announce, embeddings, device)


def _sequence_pass(model: ModelAdapter | None, probe: ProbeSet, plan: PassPlan, collectives: Collectives, two_stage: Any,
                   context: dict[str, Any] | None, progress: Any, announce: bool, embeddings: torch.Tensor | None,
                   device: torch.device) -> PassResult:
    """:func:`run_pass` once the model's buffers are the ones it measures."""
    timing = dict.fromkeys(TIMING_KEYS, 0.0)
    given = embeddings is not None

    def now() -> float:  # the GPU's queued work done first, so each part is timed with its own kernels
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    try:
        started = now()
        indices = shard_indices(collectives, len(probe))
        if embeddings is not None:
            local, problem = _given_shard(embeddings, probe, indices)
        else:
            assert model is not None  # run_pass: without embeddings there is a model
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
        decoded_path = plan.counterfactuals == "decoded"  # it renders with the decoders the two stages train first
        strips = None
        if plan.counterfactuals is not None and not decoded_path:
            start = now()
            _counterfactuals(model, probe, embeddings, report, plan, collectives)
            timing["counterfactual_s"] = now() - start
        decoded = None
        if two_stage is not None:
            start = now()
            # the decoders train where the model is, from the embeddings on the host (as their images are)
            decoded = two_stage_part(model, embeddings.cpu(), report, two_stage, plan.on_error, collectives)
            timing["two_stage_s"] = now() - start
        if decoded_path:
            start = now()
            strips = _counterfactuals(model, probe, embeddings, report, plan, collectives, two_stage)
            timing["counterfactual_s"] = now() - start
        timing["embed_s"] = embedded - started
        timing["after_embed_s"] = now() - embedded - timing["counterfactual_s"] - timing["two_stage_s"]
        report.timing = dict(timing)
    except Exception as exc:
        if plan.on_error == "raise":
            raise
        return PassResult(report=None, failure=f"{type(exc).__name__}: {exc}", timing=timing)
    if announce and collectives.rank == 0:
        announce_pass(report, context, plan.on_error)
    return PassResult(report=report, timing=timing, decoded=decoded, strips=strips)


def announce_pass(report: Report, context: dict[str, Any] | None, on_error: str = "warn") -> None:
    """Fire ``frx_analysis_completed`` (global-zero only). A sink that fails never costs the pass (nor the
    training): its failure is a warning in the report, unless ``on_error="raise"``."""
    try:
        get_plugin_manager().hook.frx_analysis_completed(report=report, context=dict(context or {}))
    except Exception as exc:
        if on_error == "raise":
            raise
        report.warnings.append(f"a frx_analysis_completed hook failed: {type(exc).__name__}: {exc}")
