"""``frx analyze``: the leakage of every attribute of an embedding-set file, or of a model on a probe set.

One entry point, :func:`analyze`, which the command calls. An embedding-set file is a
``.safetensors`` file with tensors ``embeddings`` (float32, N×D), ``identity`` (int64, N) and one
``attr.<name>`` per attribute (int64 with -1 for missing, or float32 with NaN for missing), and
header metadata ``frx.attributes`` (a JSON list of ``{"name", "kind", "classes"?, "group"?}``); see
:mod:`frx_plugin.embedding_set`.

With ``out_dir`` it writes ``analysis.json`` (layout ``frx.analysis/1``): ``format``, ``source``,
``options`` (the :class:`~frx_plugin.passes.AnalysisConfig`), the pass's report record, and
``estimated`` where estimators read attributes off the probe images.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from frx_plugin.errors import AnalysisError
from frx_plugin.history import atomic_write_text
from frx_plugin.passes import AnalysisConfig, PassPlan, announce_pass, plan_pass, run_pass
from frx_plugin.probe import ProbeSet
from frx_plugin.report import Report

__all__ = ["analyze", "ANALYSIS_FILE", "ANALYSIS_FORMAT", "CSV_COLUMNS", "leakage_rows", "format_differentials_table", "format_leakage_table"]

ANALYSIS_FORMAT = "frx.analysis/1"
ANALYSIS_FILE = "analysis.json"
CSV_COLUMNS = ("name", "kind", "group", "metric", "value", "low", "high", "leakage", "leakage_low", "leakage_high", "balanced_accuracy",
               "n", "reason")


#: Above this many samples an embedding-set file is analysed without verification, which needs every pair in memory.
VERIFICATION_MAX_SAMPLES = 100_000
#: An embedding-set file analysed with logistic heads is held in memory; above this many entries (N·D) it is refused.
LOGISTIC_MAX_ENTRIES = 2**28


def analyze(
    source: Any,
    probe: ProbeSet | None = None,
    *,
    attributes: list[str] | None = None,
    config: AnalysisConfig = AnalysisConfig(),
    out_dir: str | Path | None = None,
    model_name: str | None = None,
    with_verification: bool = True,
    progress: Any = None,
    chunk_size: int = 16384,
    counterfactuals: str = "off",
    two_stage: Any = None,
) -> Report:
    """Leakage of every attribute (and verification on the pairs) of ``source``; the importable twin of ``frx analyze``.

    ``source``: an embedding-set file (a path; ``probe`` must be None) or a model that the
    ``frx_embed`` hook embeds, with ``probe`` the probe set to embed. ``attributes``: the ones to
    include (default all). With ``out_dir``, writes ``out_dir/analysis.json`` atomically.
    ``with_verification``: also TAR at ``config.fmr``. ``progress(done, total, stage)`` after each
    chunk read or batch embedded when given. ``model_name``: how ``source`` names a model (default
    its type). ``chunk_size``: rows of a file read at once. ``counterfactuals`` (a model only):
    "off", or "auto", "exact", "decoded" (with ``two_stage``), "latent" for identity significance and error attribution as the
    training callbacks measure them — a model is analysed by the same pass they run. ``two_stage`` (a
    model only): a :class:`~frx_plugin.two_stage.TwoStageConfig` for the paper's two stages as well (the
    report's ``recovery``; with ``out_dir`` also ``decoded.png`` and ``recovery.png``, and with decoded
    counterfactuals ``counterfactuals.png``).

    A file of at most ``VERIFICATION_MAX_SAMPLES`` rows (or any file, with logistic heads, up to
    ``LOGISTIC_MAX_ENTRIES`` entries) is held in memory and analysed by the pass every loop runs
    (:func:`frx_plugin.passes.run_pass`); a larger one, or one without verification, is streamed in
    constant memory. Leakage is measured on the embeddings as stored (frx writes L2-normalised
    ones); verification compares the cosines of all pairs. A probe set that lists its pairs (a
    verification file) is verified on those.
    """
    if isinstance(source, (str, os.PathLike)):
        if probe is not None:
            raise ValueError("an embedding-set file is analysed as it is: pass no probe set with it")
        if two_stage is not None:
            raise ValueError("the two stages decode embeddings with the model: an embedding-set file has none")
        return _analyze_file(source, attributes=attributes, config=config, out_dir=out_dir, chunk_size=chunk_size,
                             progress=progress, with_verification=with_verification)
    if probe is None:
        raise ValueError("a model is analysed on a probe set: pass analyze(model, probe, ...)")
    return _analyze_model(source, probe, attributes=attributes, config=config, out_dir=out_dir, model_name=model_name,
                          with_verification=with_verification, progress=progress, counterfactuals=counterfactuals,
                          two_stage=two_stage)


def provenance(command: str) -> dict[str, Any]:
    """The command line (when this process is ``frx COMMAND``) and the versions, for the report's provenance."""
    import platform
    import sys

    from frx_plugin import __version__
    from frx_plugin.commands.common import command_line

    out: dict[str, Any] = {"versions": {"frx": __version__, "python": platform.python_version(), "torch": torch.__version__}}
    if sys.argv[1:2] == [command]:
        out["command"] = command_line()
    return out


def _write_analysis(out_dir: str | Path, source: str, config: AnalysisConfig, report: Report, estimated: Any = None) -> None:
    document = {"format": ANALYSIS_FORMAT, "source": source, "options": config.to_json(), **report.to_record(), **provenance("analyze")}
    if estimated:
        document["estimated"] = dict(estimated)
    atomic_write_text(Path(out_dir) / ANALYSIS_FILE, json.dumps(document, indent=1, allow_nan=False))


def _analyze_file(
    path: str | os.PathLike,
    *,
    attributes: list[str] | None,
    config: AnalysisConfig,
    out_dir: str | Path | None,
    chunk_size: int,
    progress: Any,
    with_verification: bool,
) -> Report:
    """An embedding-set file: through :func:`frx_plugin.passes.run_pass` (its checks and ``frx_analysis_completed``)
    when its rows are held in memory (logistic heads, or verification within :data:`VERIFICATION_MAX_SAMPLES`);
    a larger file streams through the ridge heads in constant memory."""
    from frx_plugin.embedding_set import EmbeddingSet

    dataset = EmbeddingSet(Path(path), attributes)
    dataset.warn_zero_rows = False  # recorded in the report's warnings (analysis.json, the terminal) instead
    if config.head == "logistic" and dataset.n * dataset.dim > LOGISTIC_MAX_ENTRIES:
        # the logistic solver passes over the rows once per iteration: they are held in memory
        raise AnalysisError(
            f"{path}: {dataset.n:,} × {dataset.dim} embeddings are too many for logistic heads, which hold "
            f"them in memory (at most {LOGISTIC_MAX_ENTRIES:,} entries); use the streaming ridge heads "
            "(head 'ridge') or analyse a subset"
        )
    if config.head == "logistic" or (with_verification and dataset.n <= VERIFICATION_MAX_SAMPLES):
        report = _file_pass(dataset, str(path), config, chunk_size, progress, with_verification, out_dir)  # notes zero rows itself
    else:
        report = _stream_file(dataset, config, chunk_size, progress)
        if with_verification:
            report.warnings.append(f"verification skipped: {dataset.n:,} samples is more than {VERIFICATION_MAX_SAMPLES:,} "
                                   "(it compares every pair)")
        if dataset.zero_rows_notice:
            report.warnings.append(dataset.zero_rows_notice)
        # streamed in constant memory, outside run_pass (its rows never all in memory; the file's reader refuses
        # NaN rows itself): the pass's event all the same
        announce_pass(report, {"framework": "frx analyze", "source": str(path),
                               "out_dir": None if out_dir is None else str(out_dir)}, on_error="raise")
    if out_dir is not None:
        _write_analysis(out_dir, str(path), config, report)
    return report


def _file_pass(dataset: Any, path: str, config: AnalysisConfig, chunk_size: int, progress: Any, with_verification: bool,
               out_dir: str | Path | None) -> Report:
    """The file's rows as they are through :func:`run_pass` (verification normalises them); data that allows no
    verification (no genuine or no impostor pairs) leaves the leakage standing, with a warning."""
    embeddings, identity, labels = dataset.read(chunk_size)
    if progress is not None:
        progress(dataset.n, dataset.n, "read")
    probe = ProbeSet(dataset.schema, identity, labels, source=path)
    z = embeddings.to(torch.float32)
    context = {"framework": "frx analyze", "model": None, "embeddings": path, "out_dir": None if out_dir is None else str(out_dir)}
    plan = PassPlan(config=config, on_error="raise", verification=with_verification)
    try:
        return run_pass(None, probe, plan, context=context, embeddings=z).completed
    except AnalysisError as exc:
        if not (with_verification and str(exc).startswith("identity: no ")):
            raise
        report = run_pass(None, probe, PassPlan(config=config, on_error="raise", verification=False), context=context, embeddings=z).completed
        report.warnings.append(f"verification skipped: {exc}")
        return report


def _stream_file(dataset: Any, config: AnalysisConfig, chunk_size: int, progress: Any) -> Report:
    """Leakage of a file too large to hold, read chunk by chunk (twice: statistics, then held-out scores)."""
    from frx_plugin.leakage.streaming import analyze_stream

    passes = iter(("statistics", "held-out scores"))

    def chunks():
        stage, done = next(passes, "pass"), 0
        for chunk in dataset.chunks(chunk_size):
            yield chunk
            done += chunk[0].shape[0]
            if progress is not None:
                progress(done, dataset.n, stage)

    return analyze_stream(
        chunks,
        dataset.identity(),
        dataset.schema,
        n_folds=config.n_folds,
        n_bootstrap=config.n_bootstrap,
        seed=config.seed,
        masked_attributes=dataset.attributes_with_missing_labels(),
        min_class_samples=config.min_class_samples,
    )


def _analyze_model(
    model: Any,
    probe: ProbeSet,
    *,
    attributes: list[str] | None,
    config: AnalysisConfig,
    out_dir: str | Path | None,
    model_name: str | None,
    with_verification: bool,
    progress: Any,
    counterfactuals: str,
    two_stage: Any = None,
) -> Report:
    """The pass every training loop runs (:func:`frx_plugin.passes.run_pass`), in this one process."""
    from frx_plugin.probe import select_attributes

    if attributes is not None:
        probe = select_attributes(probe, attributes)
    name = model_name or type(model).__name__
    if not with_verification and counterfactuals != "off":
        raise ValueError("--counterfactuals needs the verification threshold: leave out --no-verification, or --counterfactuals off")
    plan = plan_pass(probe, config, counterfactuals=counterfactuals, on_error="raise", verification=with_verification,
                     decoder=two_stage is not None)
    for notice in plan.notices:
        warnings.warn(f"frx analyze: {notice}", stacklevel=3)
    context = {"framework": "frx analyze", "model": name, "out_dir": None if out_dir is None else str(out_dir)}
    stages = None
    if two_stage is not None:
        from frx_plugin.two_stage import TwoStage

        stages = TwoStage(probe, two_stage)
        for message in stages.warnings:
            warnings.warn(f"frx analyze: {message}", stacklevel=3)
    result = run_pass(model, probe, plan, progress=progress, context=context, two_stage=stages)
    report = result.completed
    if out_dir is not None and result.decoded is not None:
        _write_two_stage_figures(Path(out_dir), report, result.decoded, f"{probe.source} embedded by {name}")
    if out_dir is not None and result.strips:
        from frx_plugin.figures import plot_counterfactuals

        try:
            plot_counterfactuals(result.strips, Path(out_dir) / "counterfactuals.png",
                                 title=f"{probe.source} embedded by {name}: error pairs (faces A, B), their decodings, then G(B) with one "
                                       "attribute edited in the decoder's latent space and re-embedded; green where that alone flips the decision")
        except Exception as exc:  # noqa: BLE001 - a figure never costs the analysis
            report.warnings.append(f"counterfactual figure not written: {type(exc).__name__}: {exc}")
    if out_dir is not None:
        _write_analysis(out_dir, f"{probe.source} embedded by {name}", config, report, getattr(probe, "estimated", None))
    return report


#: The figures of ``frx analyze --two-stage`` (``counterfactuals.png`` with decoded counterfactuals).
TWO_STAGE_FILES = ("decoded.png", "recovery.png", "counterfactuals.png")


def _write_two_stage_figures(out_dir: Path, report: Report, decoded: tuple, where: str) -> None:
    """``decoded.png`` (held-out faces beside samples of G(z)) and ``recovery.png``; a figure that fails is a warning."""
    from frx_plugin.figures import plot_decoded, plot_recovery

    originals, faces, similarity = decoded
    try:
        plot_decoded(originals, faces, out_dir / "decoded.png", similarity=similarity,
                     title=f"{where}: held-out faces and samples of G(z) (decoder trained on other identities)")
        if report.recovery is not None:
            plot_recovery(report.recovery, out_dir / "recovery.png", title=where)
    except Exception as exc:  # noqa: BLE001 - a figure never costs the analysis
        report.warnings.append(f"two-stage figures not written: {type(exc).__name__}: {exc}")


def leakage_rows(report: Report) -> list[dict[str, Any]]:
    """One flat row per attribute (the CSV columns)."""
    rows = []
    for item in report.leakage:
        record = item.to_record()
        record["balanced_accuracy"] = record.pop("extra", {}).get("balanced_accuracy")
        rows.append({key: record.get(key) for key in CSV_COLUMNS})
    return rows


def format_leakage_table(report: Report) -> str:
    """A terminal table of a report: metric with its interval and normalised leakage, per attribute.

    The attribute, group and kind columns are as wide as their longest entry (at least their
    heading's width and the former fixed widths), so every row's columns line up.
    """

    def fmt(v: float) -> str:
        return "   nan" if v is None or math.isnan(v) else f"{v:6.3f}"

    width = {
        "name": max([16, *(len(item.name) for item in report.leakage)]),
        "group": max([9, *(len(item.group or "") for item in report.leakage)]),
        "kind": max([11, *(len(item.kind) for item in report.leakage)]),
        "metric": max([6, *(len(item.metric) for item in report.leakage)]),
    }

    def row(name: str, group: str, kind: str, metric: str, ci: str, leakage: str) -> str:
        return (f"{name:<{width['name']}} {group:<{width['group']}} {kind:<{width['kind']}} {metric:<{width['metric']}} "
                f"{ci:<24} {leakage:>9}")

    heading = row("attribute", "group", "kind", "metric", "value (95% CI)", "leakage ℓ")
    lines = [heading, "-" * max(80, len(heading))]
    for item in report.leakage:
        ci = f"{fmt(item.value)} [{fmt(item.low).strip()}, {fmt(item.high).strip()}]"
        line = row(item.name, item.group or "", item.kind, item.metric, ci, fmt(item.leakage))
        lines.append(line + (f"  ({item.reason})" if item.reason else ""))
    if report.verification is not None:
        v = report.verification
        lines.append(f"verification: TAR {v.tar:.3f} at FMR {v.fmr:g} ({v.genuine_pairs:,} genuine, {v.impostor_pairs:,} impostor pairs)")
    heads = "ridge heads" if report.head == "ridge" else "logistic heads (continuous attributes: ridge)"
    lines.append(f"{report.n_samples:,} samples, {report.n_identities:,} identities, {report.n_folds} identity-disjoint folds, {heads}")
    return "\n".join(lines)


def format_differentials_table(report: Report) -> str:
    """A terminal table of the report's demographic differentials (empty without them): per attribute the
    max/min ratios of FNMR and FMR over its groups, FDR and GARBE with their 95% intervals, and its groups."""
    record = report.differentials
    if not record or not record.get("attributes"):
        return ""

    from frx_plugin.differentials.reasons import summary_reason

    marks: dict[str, str] = {}  # why a summary is – or ∞, by its mark in the table

    def estimate(item: dict[str, Any], key: str) -> str:
        value = item.get(key) or {}
        reason = summary_reason(item, key)
        mark = f" ({marks.setdefault(reason, 'abcdefghij'[min(len(marks), 9)])})" if reason else ""
        if value.get("value") is None and not value.get("infinite"):
            return "–" + mark
        low, high = value.get("low"), value.get("high")
        bounds = "" if low is None or high is None else f" [{low:.2f}, {high:.2f}]"
        return ("∞" if value.get("infinite") else f"{value['value']:.2f}") + bounds + mark

    width = max([16, *(len(a["name"]) for a in record["attributes"])])
    heading = f"{'attribute':<{width}} {'FNMR max/min':<20} {'FMR max/min':<20} {'FDR':<18} {'GARBE':<18} groups"
    lines = [f"demographic differentials at τ = {record['tau']:.4f} (FMR {record['fmr']:g}; 95% identity-bootstrap intervals)",
             heading, "-" * len(heading)]
    for item in record["attributes"]:
        groups = item.get("groups", [])
        small = sum(1 for g in groups if g.get("fnmr") is None and g.get("fmr") is None)
        shown = f"{len(groups)}" + (f" ({small} too small)" if small else "")
        lines.append(f"{item['name']:<{width}} {estimate(item, 'fnmr_ratio'):<20} {estimate(item, 'fmr_ratio'):<20} "
                     f"{estimate(item, 'fdr'):<18} {estimate(item, 'garbe'):<18} {shown}")
    above = [item["name"] for item in record["attributes"] for key in ("fnmr_ratio", "fmr_ratio", "garbe")
             if (item.get(key) or {}).get("low") is not None and item[key].get("value") is not None
             and item[key]["low"] > item[key]["value"]]
    lines += [f"({mark}) {reason}" for reason, mark in marks.items()]
    if above:
        lines.append(f"note: the bootstrap of max/min ratios and GARBE is biased upward with small groups; for "
                     f"{', '.join(sorted(set(above)))} an interval lies above its value (read it as an upper range)")
    return "\n".join(lines)
