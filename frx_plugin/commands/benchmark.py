"""``frx benchmark``: several backbones on one probe set, side by side.

For every backbone (a spec, :mod:`frx_plugin.specs`) or embedding file, on the same probe set:
verification (TAR at FMR 1e-3 and 1e-4, EER, each with a 95% interval from the identity
bootstrap), leakage, identity significance and error attribution per attribute (:mod:`frx_plugin.counterfactual`), and
the cost of embedding (seconds per image, parameters, embedding size D). Writes, atomically:

- ``benchmark.json`` (layout ``frx.benchmark/1``)::

    {"format": "frx.benchmark/1", "command": "...", "versions": {...}, "machine": "...",
     "probe": "<what was analysed>", "n_samples": N, "n_identities": K, "attributes": [...],
     "fmrs": [0.001, 0.0001], "n_bootstrap": B,
     "backbones": [{"spec": "...", "data": {"source", "n_samples", "n_identities", "attributes"},
                    "embedding_dim": D, "parameters": P | null,
                    "embed_seconds_per_image": s | null,
                    "verification": {"tar": {"0.001": {"value", "low", "high"}, ...}, "eer": {"value", "low", "high"}},
                    "analysis": <the pass's Report record>, "seconds": total, "error": null | "message"}, ...]}

- ``benchmark.csv``: one row per backbone, the headline numbers and per attribute ``leakage.<a>``,
  ``significance.<a>`` and ``errors.<a>``;
- ``benchmark.md``: the same as tables (one row per backbone; one row per attribute with a column
  per backbone).

A backbone whose analysis fails gets its ``error`` and the others go on. ``probe``, ``n_samples``,
``n_identities`` and ``attributes`` describe what was analysed: the probe set the backbones were
embedded on, or, when only embedding files are compared, the file(s) (``null`` counts when files
differ); each row's ``data`` says the same of that row (an embedding file: its own samples).

Intervals of verification: every identity gets a Poisson(1) multiplicity per replicate (the
hashed bootstrap of :mod:`frx_plugin.randomness`); an impostor pair weighs the product of its two
identities' multiplicities, a genuine pair its identity's; τ and TAR (and the EER) are recomputed
on the weighted pairs with the convention of :func:`frx_plugin.verification.verification`. On a
probe set that lists its pairs (a verification file) each pair is its own unit. The point
estimates are the unweighted ones, equal to :func:`~frx_plugin.verification.verification`'s.
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from frx_plugin.commands.benchmark_tables import benchmark_csv, benchmark_markdown
from frx_plugin.commands.common import check_output_folder
from frx_plugin.errors import AnalysisError
from frx_plugin.history import atomic_write_text
from frx_plugin.model import hook_embedder
from frx_plugin.passes import AnalysisConfig, plan_pass, run_pass
from frx_plugin.report import json_safe

__all__ = ["BENCHMARK_FORMAT", "BENCHMARK_FMRS", "verification_with_intervals", "run_benchmark"]

BENCHMARK_FORMAT = "frx.benchmark/1"
BENCHMARK_FMRS = (1e-3, 1e-4)
#: Pair scores held at once for the intervals (all pairs of a probe set of about 6,300 images).
MAX_PAIRS = 20_000_000
#: Files a benchmark writes (an output folder holding any files is refused unless overwriting).
OUTPUT_FILES = ("benchmark.json", "benchmark.csv", "benchmark.md", "report.html")


def _all_pairs_fit(n: int) -> None:
    if n * (n - 1) // 2 > MAX_PAIRS:
        raise AnalysisError(
            f"verification intervals hold every pair score: {n:,} samples make {n * (n - 1) // 2:,} pairs, more than "
            f"{MAX_PAIRS:,}; use a smaller probe set (fewer identities or images per identity)"
        )


def weighted_threshold(impostor_sorted: torch.Tensor, weights_sorted: torch.Tensor, fmr: float) -> float:
    """τ: the highest impostor score with at most a share ``fmr`` of the (weighted) impostor pairs strictly above it."""
    cumulative = torch.cumsum(weights_sorted, 0)
    total = float(cumulative[-1])
    # first position (descending order) where the weight up to and including it exceeds fmr · total
    j = int(torch.searchsorted(cumulative, torch.tensor([fmr * total], dtype=cumulative.dtype), right=True)[0])
    return float(impostor_sorted[min(j, impostor_sorted.numel() - 1)])


def weighted_eer(scores: torch.Tensor, genuine: torch.Tensor, weights: torch.Tensor, order: torch.Tensor | None = None) -> float:
    """½(FMR + FNMR) where they are closest, over thresholds at every score (as :func:`equal_error_rate`).

    ``order``: ``argsort(scores)`` when already known (the bootstrap reuses it).
    """
    if order is None:
        order = torch.argsort(scores)
    s, g, w = scores[order], genuine[order], weights[order]
    wg, wi = torch.where(g, w, 0.0), torch.where(g, 0.0, w)
    total_g, total_i = float(wg.sum()), float(wi.sum())
    # at threshold t = s[k] (ties: the last of a run): FNMR = weight of genuine ≤ t, FMR = weight of impostor > t
    last = torch.ones_like(s, dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]
    fnmr = torch.cumsum(wg, 0)[last] / total_g
    fmr = 1.0 - torch.cumsum(wi, 0)[last] / total_i
    best = int(torch.argmin((fmr - fnmr).abs()))
    return float(0.5 * (fmr[best] + fnmr[best]))


def _interval(values: list[float]) -> tuple[float, float]:
    finite = torch.tensor([v for v in values if math.isfinite(v)], dtype=torch.float64)
    if finite.numel() < 2:
        return math.nan, math.nan
    return float(torch.quantile(finite, 0.025)), float(torch.quantile(finite, 0.975))


@dataclass
class _PairScores:
    """The genuine and impostor scores of a probe set, and the bootstrap unit(s) each pair belongs to.

    A genuine pair weighs ``weights[genuine_unit]``; an impostor pair ``weights[impostor_a] *
    weights[impostor_b]`` (all pairs: its two identities) or ``weights[impostor_a]`` (listed pairs,
    ``impostor_b`` None: the pair itself). ``units``: what the bootstrap draws multiplicities for.
    """

    genuine_scores: torch.Tensor
    impostor_scores: torch.Tensor
    genuine_unit: torch.Tensor
    impostor_a: torch.Tensor
    impostor_b: torch.Tensor | None
    units: torch.Tensor


def _all_pair_scores(z: torch.Tensor, identity: torch.Tensor) -> _PairScores:
    """Every pair i < j, its identities the units (the scores exactly as verification() computes them)."""
    from frx_plugin.verification import genuine_pairs, score_blocks

    _all_pairs_fit(identity.numel())
    # the scores exactly as verification() computes them (same blocks, same rounding), so the point estimates agree
    genuine_parts, impostor_parts, first_parts, second_parts = [], [], [], []
    for g, i, (a, b) in score_blocks(z, identity, bound=-2.0):  # every cosine is ≥ −1: all pairs, with their indices
        genuine_parts.append(g)
        impostor_parts.append(i)
        first_parts.append(a)
        second_parts.append(b)
    ids, index = torch.unique(identity, return_inverse=True)
    return _PairScores(torch.cat(genuine_parts), torch.cat(impostor_parts), index[genuine_pairs(identity)[0]],
                       index[torch.cat(first_parts)], index[torch.cat(second_parts)], ids)


def _listed_pair_scores(z: torch.Tensor, identity: torch.Tensor, pairs: Any) -> _PairScores:
    """The listed pairs (M, 2), each its own unit."""
    pairs = torch.as_tensor(pairs, dtype=torch.int64)
    scores = (z[pairs[:, 0]] * z[pairs[:, 1]]).sum(1)  # as listed_pair_verification computes them
    same = identity[pairs[:, 0]] == identity[pairs[:, 1]]
    unit = torch.arange(pairs.shape[0])
    return _PairScores(scores[same], scores[~same], unit[same], unit[~same], None, unit)


class _WeightedMeasure:
    """TAR at each FMR and the EER of the pairs under a weighting of the units (None: every pair once)."""

    def __init__(self, pairs: _PairScores, fmrs: Sequence[float]) -> None:
        self.pairs, self.fmrs = pairs, [float(f) for f in fmrs]
        self.n_genuine, self.n_impostor = pairs.genuine_scores.numel(), pairs.impostor_scores.numel()
        self.impostor_order = torch.argsort(pairs.impostor_scores, descending=True, stable=True)
        self.impostor_sorted = pairs.impostor_scores[self.impostor_order]
        self.scores = torch.cat([pairs.genuine_scores, pairs.impostor_scores])
        self.genuine = torch.cat([torch.ones(self.n_genuine, dtype=torch.bool), torch.zeros(self.n_impostor, dtype=torch.bool)])
        self.ascending = torch.argsort(self.scores)

    def __call__(self, weights: torch.Tensor | None) -> tuple[dict[float, float], float]:
        pairs = self.pairs
        if weights is None:
            w_gen = torch.ones(self.n_genuine, dtype=torch.float64)
            w_imp = torch.ones(self.n_impostor, dtype=torch.float64)
        else:
            # a genuine pair weighs its identity's multiplicity; an impostor pair the product of its two (listed: its own)
            w_gen = weights[pairs.genuine_unit]
            w_imp = weights[pairs.impostor_a] * (weights[pairs.impostor_b] if pairs.impostor_b is not None else 1.0)
        w_all = torch.cat([w_gen, w_imp])
        w_imp = w_imp[self.impostor_order]
        tars: dict[float, float] = {}
        for fmr in self.fmrs:
            if float(w_imp.sum()) * fmr < 1.0 or float(w_gen.sum()) == 0.0:
                tars[fmr] = math.nan
                continue
            tau = weighted_threshold(self.impostor_sorted, w_imp, fmr)
            tars[fmr] = float((w_gen * (pairs.genuine_scores > tau)).sum() / w_gen.sum())
        usable = float(w_gen.sum()) > 0 and float(w_imp.sum()) > 0
        eer = weighted_eer(self.scores, self.genuine, w_all, self.ascending) if usable else math.nan
        return tars, eer


@torch.no_grad()
def verification_with_intervals(
    embeddings: torch.Tensor,
    identity: torch.Tensor,
    fmrs: Sequence[float] = BENCHMARK_FMRS,
    n_bootstrap: int = 200,
    seed: int = 0,
    pairs: torch.Tensor | None = None,
) -> dict[str, Any]:
    """TAR at each of ``fmrs`` and the EER, each ``{"value", "low", "high"}`` (95% identity-bootstrap interval).

    All pairs of the probe set, or the listed ``pairs`` (M, 2) (then each pair is its own unit of
    the bootstrap). A TAR whose FMR needs more impostor pairs than there are (fewer than 1/fmr) is
    NaN with the reason in ``"notes"``.
    """
    from frx_plugin.randomness import poisson_bootstrap_weights
    from frx_plugin.verification import prepare_embeddings

    z, identity = prepare_embeddings(embeddings, identity)
    scored = _all_pair_scores(z, identity) if pairs is None else _listed_pair_scores(z, identity, pairs)
    n_genuine, n_impostor = scored.genuine_scores.numel(), scored.impostor_scores.numel()
    if n_genuine == 0 or n_impostor == 0:
        raise AnalysisError(f"verification needs genuine and impostor pairs; there are {n_genuine} and {n_impostor}")
    units = scored.units
    replicate = poisson_bootstrap_weights(units, seed, n_bootstrap).to(torch.float64) if n_bootstrap else torch.zeros(0, units.numel())
    measure = _WeightedMeasure(scored, fmrs)
    notes: dict[str, str] = {}
    tar_draws: dict[float, list[float]] = {float(f): [] for f in fmrs}
    eer_draws: list[float] = []
    point_tar, point_eer = measure(None)
    for fmr in tar_draws:
        if n_impostor * fmr < 1.0:
            notes[f"{fmr:g}"] = f"{n_impostor:,} impostor pairs are too few for FMR {fmr:g} (at least {math.ceil(1 / fmr):,} needed)"
    for r in range(replicate.shape[0]):
        tars, eer = measure(replicate[r])
        for fmr, value in tars.items():
            tar_draws[fmr].append(value)
        eer_draws.append(eer)
    out: dict[str, Any] = {"tar": {}, "genuine_pairs": n_genuine, "impostor_pairs": n_impostor}
    for fmr, value in point_tar.items():
        low, high = _interval(tar_draws[fmr]) if math.isfinite(value) else (math.nan, math.nan)
        out["tar"][f"{fmr:g}"] = {"value": value, "low": low, "high": high}
    low, high = _interval(eer_draws)
    out["eer"] = {"value": point_eer, "low": low, "high": high}
    if notes:
        out["notes"] = notes
    return out


def _parameters(model: Any) -> int | None:
    try:
        return int(sum(p.numel() for p in model.parameters()))
    except AttributeError:
        return None


def _versions() -> dict[str, str]:
    import importlib.metadata

    from frx_plugin import __version__

    out = {"frx": __version__, "python": platform.python_version(), "torch": torch.__version__}
    for name in ("insightface", "onnxruntime", "lightning", "torchmetrics"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def _machine() -> str:
    import os

    return f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPU threads, torch threads {torch.get_num_threads()}"


def _embed(model: Any, probe: Any, batch_size: int, progress: Callable | None, label: str) -> tuple[torch.Tensor, float]:
    embed = hook_embedder(model)
    indices = torch.arange(len(probe))
    chunks, seconds, done = [], 0.0, 0
    for chunk, images in probe.batches(indices, batch_size):
        start = time.perf_counter()
        chunks.append(embed(images))
        seconds += time.perf_counter() - start  # the model's time only, not the probe set's rendering or decoding
        done += chunk.numel()
        if progress is not None:
            progress(done, len(probe), label)
    return torch.cat(chunks), seconds


def run_benchmark(
    backbones: Sequence[str],
    probe: Any = None,
    *,
    pairs: str | None = None,
    embedding_files: Sequence[str] = (),
    estimators: Sequence[str] = (),
    out_dir: str | Path,
    overwrite: bool = False,
    n_bootstrap: int = 200,
    seed: int = 0,
    max_error_pairs: int = 16,
    command: str | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    say: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
    two_stage: Any = None,
) -> dict[str, Any]:
    """Benchmark the backbone specs (and embedding files) on one probe set; write the files; return the document.

    ``probe``: a probe spec or a probe set, or ``pairs`` a verification file; default: the probe set
    the first backbone names (built-in ``synthetic:`` ones name held-out identities of the synthetic
    world), else the synthetic probe set (:func:`frx_plugin.specs.probe_for`). ``estimators``: estimator specs that read
    attributes off the probe images.
    Every spec's kind is checked before anything runs (an unknown kind lists the installed ones).
    ``two_stage``: a :class:`~frx_plugin.two_stage.TwoStageConfig` for the paper's two stages on every backbone
    as well (each row's ``analysis.recovery``; decoders trained for each backbone, one estimator for all).
    """
    from frx_plugin.specs import probe_for

    if not backbones and not embedding_files:
        raise ValueError("nothing to compare: pass at least one --backbone SPEC (or --embeddings FILE)")
    if two_stage is not None and not backbones:
        raise ValueError("--two-stage decodes the embeddings with each backbone: pass --backbone SPEC (an embedding file has no model)")
    if not backbones and (probe is not None or pairs is not None or estimators):
        raise ValueError("--probe, --pairs and --estimator set what the backbones are embedded on; an embedding file is compared "
                         "as it is: pass them with --backbone SPEC")
    out = Path(out_dir)
    check_output_folder(out, "--out", OUTPUT_FILES, overwrite=overwrite, any_file=True)
    _check_sources(backbones, embedding_files)
    config = AnalysisConfig(n_bootstrap=n_bootstrap, seed=seed, fmr=BENCHMARK_FMRS[0], differentials=True,
                            differential_curves=True)
    probe_set = None
    if backbones:
        given = probe is not None or pairs is not None  # then opened first: its errors come before training any backbone
        probe_set = probe_for(None, probe, pairs, estimators, progress) if given else None
        opened = _open_backbones(backbones, say)
        if probe_set is None:
            named = next((facts for _, _, facts, _ in opened if facts.get("probe")), None)
            probe_set = probe_for(named, estimators=estimators, progress=progress)
        stages = _TwoStages(probe_set, two_stage, say)
        rows = [_backbone_row(text, model, facts, open_seconds, probe_set, config, max_error_pairs, progress, say, stages)
                for text, model, facts, open_seconds in opened]
    else:
        rows = []
    rows += [_embedding_file_row(path, config, max_error_pairs, say) for path in embedding_files]
    document = {
        "format": BENCHMARK_FORMAT,
        "command": command,
        "versions": _versions(),
        "machine": _machine(),
        **_analysed(probe_set, rows),
        "fmrs": list(BENCHMARK_FMRS),
        "n_bootstrap": n_bootstrap,
        "estimated": dict(getattr(probe_set, "estimated", {}) or {}),
        "backbones": rows,
    }
    document = json_safe(document)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "benchmark.json", json.dumps(document, indent=1, allow_nan=False))
    atomic_write_text(out / "benchmark.csv", benchmark_csv(document))
    atomic_write_text(out / "benchmark.md", benchmark_markdown(document))
    document["files"] = [str(out / name) for name in ("benchmark.json", "benchmark.csv", "benchmark.md")]
    return document


def _data(source: str, identity: torch.Tensor, names: Sequence[str]) -> dict[str, Any]:
    """What one row analysed: its source, samples, identities and attributes."""
    return {"source": source, "n_samples": int(identity.numel()), "n_identities": int(torch.unique(identity).numel()),
            "attributes": list(names)}


def _analysed(probe_set: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The document's description of what was analysed: the backbones' probe set, else the embedding file(s) as read."""
    if probe_set is not None:
        return {"probe": probe_set.source, **{k: v for k, v in _data(probe_set.source, probe_set.identity, probe_set.schema.names).items()
                                              if k != "source"}}
    data = [row["data"] for row in rows if row.get("data")]
    paths = [row["spec"].removeprefix("embeddings:") for row in rows]
    source = ("embedding-set file " if len(paths) == 1 else "embedding-set files ") + ", ".join(paths)

    def agreed(key: str) -> Any:
        values = {repr(d[key]) for d in data}
        return data[0][key] if data and len(values) == 1 and len(data) == len(rows) else None

    return {"probe": source, "n_samples": agreed("n_samples"), "n_identities": agreed("n_identities"), "attributes": agreed("attributes")}


def _check_sources(backbones: Sequence[str], embedding_files: Sequence[str]) -> None:
    """Every spec's kind is installed (an unknown kind lists the installed ones) and every embedding file exists."""
    from frx_plugin.plugins import PluginError, backbones as backbone_kinds
    from frx_plugin.specs import parse_spec

    kinds = backbone_kinds()
    for text in backbones:
        spec = parse_spec(text, "backbone")
        if spec.kind not in kinds:
            offered = "; ".join(f"{k} ({r.description})" for k, r in sorted(kinds.items()))
            raise PluginError(f"backbone {text!r}: unknown kind {spec.kind!r}; the installed plugins offer: {offered}")
    for path in embedding_files:
        if not Path(path).is_file():
            raise FileNotFoundError(f"--embeddings {path}: no such file")


def _open_backbones(backbones: Sequence[str], say: Callable[[str], None]) -> list[tuple[str, Any, dict, float]]:
    """(spec, model, facts, seconds to open) of each backbone spec, in order."""
    from frx_plugin.specs import open_backbone

    opened: list[tuple[str, Any, dict, float]] = []
    for text in backbones:
        start = time.perf_counter()
        say(f"frx benchmark: opening {text}")
        model, facts = open_backbone(text)
        opened.append((text, model, facts, time.perf_counter() - start))
    return opened


class _TwoStages:
    """A fresh two-stage state (decoders) for each backbone, all reading with one estimator (made once)."""

    def __init__(self, probe_set: Any, config: Any, say: Callable[[str], None]) -> None:
        self.probe_set, self.config, self.say = probe_set, config, say
        self.first: Any = None  # the first backbone's two stages, whose estimator the others share

    def next(self) -> Any:
        if self.config is None:
            return None
        from frx_plugin.two_stage import TwoStage

        if self.first is None:
            self.first = TwoStage(self.probe_set, self.config)
            for message in self.first.warnings:
                self.say(f"frx benchmark: {message}")
            return self.first
        return TwoStage(self.probe_set, self.config, estimator=self.first.estimator, estimator_name=self.first.estimator_name)


def _backbone_row(text: str, model: Any, facts: dict, open_seconds: float, probe_set: Any, config: AnalysisConfig,
                  max_error_pairs: int, progress: Callable | None, say: Callable[[str], None],
                  stages: _TwoStages | None = None) -> dict[str, Any]:
    """One backbone's row: its embedding cost and analysis, or its ``error`` (the others go on)."""
    start = time.perf_counter()
    row: dict[str, Any] = {"spec": text, "data": _data(probe_set.source, probe_set.identity, probe_set.schema.names), "error": None}
    try:
        z, seconds = _embed(model, probe_set, config.batch_size, progress, f"embedding {text}")
        row.update(embedding_dim=int(z.shape[1]), parameters=_parameters(model), embed_seconds_per_image=seconds / len(probe_set))
        if facts.get("training_seconds") is not None:
            row["training_seconds"] = facts["training_seconds"]
        say(f"frx benchmark: analysing {text} (D = {z.shape[1]})")
        two_stage = stages.next() if stages is not None else None
        row.update(_analyse(model, z, probe_set, config, max_error_pairs, getattr(probe_set, "pairs", None), two_stage))
    except Exception as exc:  # noqa: BLE001 - one backbone's failure is its row's; the others go on
        row["error"] = f"{type(exc).__name__}: {exc}"
        say(f"frx benchmark: {text} failed: {row['error']}")
    row["seconds"] = time.perf_counter() - start + open_seconds
    return row


def _embedding_file_row(path: str, config: AnalysisConfig, max_error_pairs: int, say: Callable[[str], None]) -> dict[str, Any]:
    """One embedding file's row (no embedding cost), or its ``error``."""
    start = time.perf_counter()
    row: dict[str, Any] = {"spec": f"embeddings:{path}", "error": None, "parameters": None, "embed_seconds_per_image": None}
    try:
        from frx_plugin.embedding_set import read_embedding_set
        from frx_plugin.probe import ProbeSet

        z, identity, labels, schema = read_embedding_set(path)
        row["data"] = _data(f"embedding-set file {path}", identity, schema.names)
        z = torch.nn.functional.normalize(z.to(torch.float32), dim=1)
        row["embedding_dim"] = int(z.shape[1])
        as_probe = ProbeSet(schema, identity, labels, source=str(path))
        row.update(_analyse(None, z, as_probe, config, max_error_pairs, None))
    except Exception as exc:  # noqa: BLE001
        row["error"] = f"{type(exc).__name__}: {exc}"
        say(f"frx benchmark: {path} failed: {row['error']}")
    row["seconds"] = time.perf_counter() - start
    return row


def _analyse(model: Any, z: torch.Tensor, probe: Any, config: AnalysisConfig, max_error_pairs: int, listed: Any,
             two_stage: Any = None) -> dict[str, Any]:
    """The pass every loop runs (:func:`frx_plugin.passes.run_pass`) on the embeddings ``z`` the benchmark timed, with
    counterfactuals (exact where a generator renders the probe set, else latent), and verification at every FMR."""
    plan = plan_pass(probe, config, counterfactuals="auto" if model is not None else "latent",
                     max_error_pairs=max_error_pairs, on_error="raise", decoder=two_stage is not None)
    report = run_pass(model, probe, plan, context={"framework": "frx benchmark", "probe": getattr(probe, "source", None)},
                      embeddings=z, two_stage=two_stage).completed
    verification = verification_with_intervals(z, probe.identity, BENCHMARK_FMRS, config.n_bootstrap, config.seed, pairs=listed)
    record = report.to_record()
    return {"verification": verification, "analysis": record}
