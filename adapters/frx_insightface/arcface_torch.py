"""frx inside InsightFace's arcface_torch training loop.

arcface_torch's ``train_v2.py`` calls its callbacks as ``callback(global_step, backbone)`` on every
rank, with the backbone wrapped in ``DistributedDataParallel``. :class:`ArcFaceTorchCallback` has
that signature: every ``every_n_steps`` steps it runs an frx pass on every rank (each rank embeds
its own shard of the probe set, the statistics are reduced across ranks, the embeddings gathered
for verification), the global-zero rank writes the history, and, given a ``SummaryWriter``, the
scalars go to it under the Lightning adapter's names (``frx/leakage/<attribute>``, …)::

    frx_callback = ArcFaceTorchCallback(probe, out_dir=cfg.output + "/frx", every_n_steps=2000, writer=summary_writer)
    ...
    for global_step, (img, labels) in enumerate(train_loader):
        ...
        callback_verification(global_step, backbone)
        frx_callback(global_step, backbone)

A pass that fails (NaN embeddings, an exception on any rank) is skipped on every rank with a
warning, and training goes on, unless ``on_error="raise"``.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from frx_plugin.analysis import ON_ERROR, AnalysisConfig, embed_probe_set, probe_leakage, scalar_metrics
from frx_plugin.history import HistoryRecorder
from frx_plugin.plugins import get_plugin_manager
from frx_plugin.probe import ProbeSet
from frx_plugin.errors import AnalysisError
from frx_plugin.report import Report
from frx_plugin.verification import verification


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _any_rank(flag: bool, world: int) -> bool:
    if world == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def _gather(local: torch.Tensor, n: int, rank: int, world: int) -> torch.Tensor:
    """All N embeddings in order on every rank from each rank's ``rank::world`` share (padding dropped)."""
    if world == 1:
        return local
    per_rank = math.ceil(n / world)
    padded = torch.zeros(per_rank, local.shape[1])
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    full = torch.empty(n, local.shape[1])
    for r in range(world):
        full[r::world] = parts[r][: len(range(r, n, world))]
    return full


class ArcFaceTorchCallback:
    """An frx pass every ``every_n_steps`` steps of an arcface_torch loop (see the module).

    The history's ``epoch`` field holds the pass number (``global_step // every_n_steps``) and
    ``global_step`` the step; ``writer`` is any object with ``add_scalar(tag, value, step)``
    (``torch.utils.tensorboard.SummaryWriter``, tensorboardX's).
    """

    def __init__(self, probe: ProbeSet, out_dir: str | Path = "frx-history", every_n_steps: int = 2000, writer: Any = None,
                 config: AnalysisConfig = AnalysisConfig(), on_error: str = "warn") -> None:
        if not isinstance(probe, ProbeSet):
            raise TypeError(f"probe must be a frx_plugin.probe.ProbeSet, got {type(probe).__name__}")
        if not isinstance(every_n_steps, int) or isinstance(every_n_steps, bool) or every_n_steps < 1:
            raise ValueError(f"every_n_steps must be a positive integer, got {every_n_steps!r}")
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        if writer is not None and not callable(getattr(writer, "add_scalar", None)):
            raise TypeError(f"writer must have add_scalar(tag, value, step) (a SummaryWriter), got {type(writer).__name__}")
        self.probe, self.out_dir, self.every_n_steps = probe, Path(out_dir), every_n_steps
        self.writer, self.config, self.on_error = writer, config, on_error
        self.history = HistoryRecorder(self.out_dir, probe.schema)
        self.failures: list[dict[str, Any]] = []
        self.last_report: Report | None = None

    def __call__(self, global_step: int, backbone: Any) -> None:
        if global_step % self.every_n_steps == 0:
            self.run(global_step, backbone)

    def run(self, global_step: int, backbone: Any) -> Report | None:
        """One pass now (every rank must call it: it runs collectives)."""
        rank, world = _world()
        module = backbone.module if isinstance(backbone, torch.nn.parallel.DistributedDataParallel) else backbone
        report = None
        try:
            indices = torch.arange(rank, len(self.probe), world)
            problem: BaseException | None = None
            try:
                local = embed_probe_set(module, self.probe, indices, self.config.batch_size)
                if local.numel() and not bool(torch.isfinite(local).all()):
                    problem = AnalysisError("embeddings contain NaN or infinity — did the training diverge?")
            except Exception as exc:  # noqa: BLE001 - every rank learns of it before the first collective
                problem = exc
            if _any_rank(problem is not None, world):
                raise problem or RuntimeError("the analysis pass failed on another process; it is skipped on every process")
            report = probe_leakage(local, self.probe, self.config, indices, distributed=world > 1)
            embeddings = _gather(local, len(self.probe), rank, world)
            report.verification = verification(embeddings, self.probe.identity, fmr=self.config.fmr)
            report.epoch, report.global_step = global_step // self.every_n_steps, global_step
            self.last_report = report
            self.history.add(report.to_record(), report.tensors)
            if rank == 0:
                self.history.write()
                if self.writer is not None:
                    for tag, value in scalar_metrics(report).items():
                        self.writer.add_scalar(tag, value, global_step)
                get_plugin_manager().hook.frx_analysis_completed(
                    report=report,
                    context={"epoch": report.epoch, "global_step": global_step, "out_dir": str(self.out_dir), "framework": "arcface_torch"},
                )
        except Exception as exc:
            if self.on_error == "raise":
                raise
            self.failures.append({"global_step": global_step, "error": f"{type(exc).__name__}: {exc}"})
            if rank == 0:
                warnings.warn(f"frx: the analysis pass at step {global_step} failed and is skipped; training goes on. "
                              f"{type(exc).__name__}: {exc}", RuntimeWarning, stacklevel=2)
            report = None
        if world > 1:
            dist.barrier()
        return report
