"""One analysis pass: embed a probe set with a model, recover attributes, measure verification.

Framework-free; the adapters decide when a pass runs and where its numbers go.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from frx_plugin.history import atomic_write_text
from frx_plugin.counterfactual.measures import (  # noqa: F401 - re-exported until the move ends
    choose_counterfactual_path,
    counterfactual_embedder,
    counterfactual_measures,
    counterfactual_rows,
    generator_attributes,
    probe_decision_errors,
)
from frx_plugin.model import embed_probe_set, hook_embedder, model_device  # noqa: F401 - re-exported until the move ends
from frx_plugin.passes import (  # noqa: F401 - re-exported until the move ends
    COUNTERFACTUAL_PATHS,
    ON_ERROR,
    AnalysisConfig,
    probe_leakage,
    scalar_metrics,
)
from frx_plugin.probe import ProbeSet
from frx_plugin.errors import AnalysisError
from frx_plugin.leakage import analyze_embeddings
from frx_plugin.report import Report
from frx_plugin.verification import listed_pair_verification, verification

def analyze_probe(embeddings: torch.Tensor, probe: ProbeSet, config: AnalysisConfig = AnalysisConfig()) -> Report:
    """Leakage of every attribute of ``probe`` and verification on its pairs, from the embeddings of all its samples.

    A probe set that lists its pairs (``probe.pairs``, as a verification file does) is verified on
    those pairs only; otherwise on all pairs.
    """
    report = probe_leakage(embeddings, probe, config)
    listed = getattr(probe, "pairs", None)
    if listed is not None:
        report.verification = listed_pair_verification(embeddings, probe.identity, listed, fmr=config.fmr)
    else:
        report.verification = verification(embeddings, probe.identity, fmr=config.fmr)
    return report


ANALYSIS_FORMAT = "frx.analysis/1"
CSV_COLUMNS = ("name", "kind", "group", "metric", "value", "low", "high", "leakage", "leakage_low", "leakage_high", "balanced_accuracy", "n", "reason")


#: Above this many samples ``analyze_file`` skips verification, which needs every pair in memory.
VERIFICATION_MAX_SAMPLES = 100_000
#: ``analyze_file`` with logistic heads holds the embeddings in memory; above this many entries (N·D) it refuses.
LOGISTIC_MAX_ENTRIES = 2**28


def analyze_file(
    path: str | Path,
    *,
    attributes: list[str] | None = None,
    config: AnalysisConfig = AnalysisConfig(),
    out_dir: str | Path | None = None,
    chunk_size: int = 16384,
    progress: Any = None,
    with_verification: bool = True,
) -> Report:
    """Leakage of every attribute of an embedding-set file, streamed in constant memory.

    Leakage is measured on the embeddings as stored (frx writes L2-normalised ones, DESIGN.md
    §2) by :func:`frx_plugin.leakage.streaming.analyze_stream`; verification (cosines of all pairs) runs
    when the file has at most ``VERIFICATION_MAX_SAMPLES`` rows. With ``out_dir``, writes
    ``out_dir/analysis.json`` atomically. ``progress(done_rows, total_rows, stage)`` is called
    after each chunk when given. The importable twin of ``frx analyze``.
    """
    from frx_plugin.embedding_set import EmbeddingSet
    from frx_plugin.leakage.streaming import analyze_stream

    dataset = EmbeddingSet(path, attributes)
    passes = iter(("statistics", "held-out scores"))

    def chunks():
        stage, done = next(passes, "pass"), 0
        for chunk in dataset.chunks(chunk_size):
            yield chunk
            done += chunk[0].shape[0]
            if progress is not None:
                progress(done, dataset.n, stage)

    if config.head == "logistic":
        # the logistic solver passes over the rows once per iteration: they are held in memory
        if dataset.n * dataset.dim > LOGISTIC_MAX_ENTRIES:
            raise AnalysisError(
                f"{path}: {dataset.n:,} × {dataset.dim} embeddings are too many for logistic heads, which hold "
                f"them in memory (at most {LOGISTIC_MAX_ENTRIES:,} entries); use the streaming ridge heads "
                "(head 'ridge') or analyse a subset"
            )
        embeddings, identity, labels = dataset.read(chunk_size)
        if progress is not None:
            progress(dataset.n, dataset.n, "read")
        report = analyze_embeddings(
            embeddings, identity, labels, dataset.schema, n_folds=config.n_folds, n_bootstrap=config.n_bootstrap,
            seed=config.seed, head="logistic", C=float(config.C),
        )
    else:
        report = analyze_stream(
            chunks,
            dataset.identity(),
            dataset.schema,
            n_folds=config.n_folds,
            n_bootstrap=config.n_bootstrap,
            seed=config.seed,
            masked_attributes=dataset.attributes_with_missing_labels(),
        )
    if with_verification and dataset.n <= VERIFICATION_MAX_SAMPLES:
        embeddings, identity, _ = dataset.read(chunk_size)
        try:
            report.verification = verification(torch.nn.functional.normalize(embeddings, dim=1), identity, fmr=config.fmr)
        except ValueError as exc:  # e.g. one image per identity: no genuine pairs; leakage is still defined
            report.warnings.append(f"verification skipped: {exc}")
    elif with_verification:
        report.warnings.append(f"verification skipped: {dataset.n:,} samples is more than {VERIFICATION_MAX_SAMPLES:,} (it compares every pair)")
    if out_dir is not None:
        document = {"format": ANALYSIS_FORMAT, "source": str(path), "options": config.to_json(), **report.to_record()}
        atomic_write_text(Path(out_dir) / "analysis.json", json.dumps(document, indent=1, allow_nan=False))
    return report


def analyze_model(
    model: Any,
    probe: ProbeSet,
    *,
    attributes: list[str] | None = None,
    config: AnalysisConfig = AnalysisConfig(),
    out_dir: str | Path | None = None,
    model_name: str | None = None,
    with_verification: bool = True,
    progress: Any = None,
) -> Report:
    """Embed ``probe`` with ``model`` (through ``frx_embed``) and analyse it: leakage, and verification on its pairs.

    The importable twin of ``frx analyze --backbone``. A probe set that lists its pairs (a
    verification file) is verified on those. With ``out_dir``, writes ``out_dir/analysis.json``
    (the layout of :func:`analyze_file`'s, with ``source`` naming the probe set and the model).
    ``progress(done, total, stage)`` after each embedded batch.
    """
    from frx_plugin.probe import select_attributes

    if attributes is not None:
        probe = select_attributes(probe, attributes)
    z = embed_probe_set(model, probe, batch_size=config.batch_size, progress=progress)
    if with_verification:
        report = analyze_probe(z, probe, config)
    else:
        report = probe_leakage(z, probe, config)
    if out_dir is not None:
        source = f"{probe.source} embedded by {model_name or type(model).__name__}"
        document = {"format": ANALYSIS_FORMAT, "source": source, "options": config.to_json(), **report.to_record()}
        estimated = getattr(probe, "estimated", None)
        if estimated:
            document["estimated"] = dict(estimated)
        atomic_write_text(Path(out_dir) / "analysis.json", json.dumps(document, indent=1, allow_nan=False))
    return report


def leakage_rows(report: Report) -> list[dict[str, Any]]:
    """One flat row per attribute (the CSV columns)."""
    rows = []
    for item in report.leakage:
        record = item.to_record()
        record["balanced_accuracy"] = record.pop("extra", {}).get("balanced_accuracy")
        rows.append({key: record.get(key) for key in CSV_COLUMNS})
    return rows


def format_leakage_table(report: Report) -> str:
    """A terminal table of a report: metric with its interval and normalised leakage, per attribute."""

    def fmt(v: float) -> str:
        return "   nan" if v is None or math.isnan(v) else f"{v:6.3f}"

    lines = [f"{'attribute':<16} {'group':<9} {'kind':<11} {'metric':<6} {'value (95% CI)':<24} {'leakage ℓ':>9}", "-" * 80]
    for item in report.leakage:
        ci = f"{fmt(item.value)} [{fmt(item.low).strip()}, {fmt(item.high).strip()}]"
        line = f"{item.name:<16} {item.group or '':<9} {item.kind:<11} {item.metric:<6} {ci:<24} {fmt(item.leakage):>9}"
        lines.append(line + (f"  ({item.reason})" if item.reason else ""))
    if report.verification is not None:
        v = report.verification
        lines.append(f"verification: TAR {v.tar:.3f} at FMR {v.fmr:g} ({v.genuine_pairs:,} genuine, {v.impostor_pairs:,} impostor pairs)")
    heads = "ridge heads" if report.head == "ridge" else "logistic heads (continuous attributes: ridge)"
    lines.append(f"{report.n_samples:,} samples, {report.n_identities:,} identities, {report.n_folds} identity-disjoint folds, {heads}")
    return "\n".join(lines)
