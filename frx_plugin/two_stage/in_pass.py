"""The paper's two stages inside an analysis pass: every rank trains the decoders of its folds, all get all.

:func:`prepare_two_stage` makes the two-stage state on every rank (rank 0 first: its estimator may train
and cache itself); :func:`two_stage_part` runs it in a pass (:func:`frx_plugin.passes.run_pass`).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from frx_plugin.collectives import Collectives, merge_ranks
from frx_plugin.errors import AnalysisError
from frx_plugin.model import hook_embedder
from frx_plugin.probe import ProbeSet
from frx_plugin.report import Report

_FIT_KEYS = ("pixel_loss_start", "pixel_loss_end", "identity_loss_start", "identity_loss_end")


def _fold_summary(results: list, n_folds: int) -> torch.Tensor:
    """(n_folds, 5): failed flag and the fit's losses of each fold this rank ran, NaN elsewhere."""
    summary = torch.full((n_folds, 1 + len(_FIT_KEYS)), math.nan, dtype=torch.float64, device="cpu")
    for r in results:
        fit = r.fit or {}
        summary[r.fold] = torch.tensor(
            [0.0 if r.error is None else 1.0, *(math.nan if fit.get(k) is None else float(fit[k]) for k in _FIT_KEYS)],
            dtype=torch.float64,
        )
    return summary


def two_stage_part(model: Any, embeddings: torch.Tensor, report: Report, two_stage: Any, on_error: str,
                   collectives: Collectives):
    """Decoders and estimator; each rank trains the decoders of its own folds. Returns the figure's faces or ``None``."""
    n_folds = two_stage.config.n_folds
    folds = list(range(collectives.rank, n_folds, collectives.world_size))
    results, problem = [], None
    two_stage.fresh_folds = set()  # the folds whose decoders this pass trained here (the decoded counterfactuals use them)
    try:
        embed = hook_embedder(model)
        results = [two_stage.run_fold(f, embeddings, model, embed) for f in folds]
    except Exception as exc:  # noqa: BLE001 - every rank learns of it below, before the gather
        problem = exc
    if collectives.any(problem is not None):
        message = f"{type(problem).__name__}: {problem}" if problem else "it failed on another process"
        report.warnings.append(f"two-stage recovery skipped: {message}")
        if on_error == "raise" and problem is not None and not isinstance(problem, AnalysisError):
            raise problem
        return None
    # each fold's readings and fit summary, NaN where another rank owns the fold; merged after one gather each
    width = (len(two_stage.attributes) + 1) * two_stage.config.samples
    mine = torch.full((embeddings.shape[0], width), math.nan, dtype=torch.float64, device="cpu")
    for r in results:
        mine = torch.where(torch.isnan(mine), two_stage.pack(r), mine)
    mine, summary = merge_ranks(collectives, mine), merge_ranks(collectives, _fold_summary(results, n_folds))
    readings, similarity = two_stage.unpack(mine)
    local_errors = {r.fold: r.error for r in results if r.error}
    errors, fits = [], {}
    for fold in range(n_folds):
        row = summary[fold].tolist()
        if row[0] == 1.0:
            errors.append(local_errors.get(fold, f"the decoder of fold {fold} failed on another process (diverged)"))
        fits[fold] = {k: (None if math.isnan(v) else v) for k, v in zip(_FIT_KEYS, row[1:])}
    for message in errors:
        report.warnings.append(f"two-stage: {message}; its faces are left out of R_k and training goes on")
    report.recovery = two_stage.measures(embeddings, readings, similarity, fits, errors)
    two_stage.fresh_folds = {r.fold for r in results if r.error is None}
    first = next((r for r in results if r.fold == 0 and r.decoded is not None), None)
    return (first.originals, first.decoded, first.similarity[: first.decoded.shape[0]]) if first is not None else None


def prepare_two_stage(probe: ProbeSet, config: Any, collectives: Collectives) -> Any:
    """The :class:`~frx_plugin.two_stage.TwoStage` of ``config`` on every rank, made on rank 0 first.

    Its estimator may train and cache itself on first use: rank 0 makes it, the others then load
    it. A configuration error (no estimator, shapes that do not fit) is raised on every rank
    alike, never on one alone (every rank must call this).
    """
    from frx_plugin.two_stage.runner import TwoStage

    made, problem = None, None
    for turn in (True, False):
        if (collectives.rank == 0) == turn and problem is None:
            try:
                made = TwoStage(probe, config)
            except Exception as exc:  # noqa: BLE001 - raised below on every rank
                problem = exc
        if turn:
            collectives.barrier()
    if collectives.any(problem is not None):
        raise problem or RuntimeError("frx: the two-stage path could not be set up on another process (see its error)")
    return made
