"""frx inside InsightFace's arcface_torch training loop.

arcface_torch's ``train_v2.py`` calls its callbacks as ``callback(global_step, backbone)`` on every
rank, with the backbone wrapped in ``DistributedDataParallel``. :class:`ArcFaceTorchCallback` has
that signature: every ``every_n_steps`` steps it runs the frx pass (:func:`frx_plugin.passes.run_pass`,
the same pass as the Lightning callback's) on every rank, the global-zero rank writes the history,
logs one line to arcface_torch's log (Python ``logging``), and, given a ``SummaryWriter``, sends the
scalars to it under the Lightning adapter's names (``frx/leakage/<attribute>``, …)::

    frx_callback = ArcFaceTorchCallback(probe, out_dir=os.path.join(cfg.output, "frx"), every_n_steps=2000,
                                        writer=summary_writer)
    if cfg.resume:
        frx_callback.load_state_dict(dict_checkpoint["state_frx"])
    ...
    for epoch in range(start_epoch, cfg.num_epoch):
        for _, (img, local_labels) in enumerate(train_loader):
            global_step += 1
            ...
            with torch.no_grad():
                frx_callback(global_step, backbone, epoch=epoch)   # every rank; it keeps its own schedule
    ...
        checkpoint = {..., "state_frx": frx_callback.state_dict()}

The collectives travel on a device the process group supports (the current CUDA device under
NCCL; see :class:`frx_plugin.collectives.TorchDistributed`). A pass that fails (NaN embeddings, an
exception on any rank) is skipped on every rank, logged, and kept in the history's ``failures``;
training goes on, unless ``on_error="raise"``. A history folder that cannot be written costs no pass:
the writer and the log have it first, the writer gets ``frx/history_write_failed``, the log a warning
naming the folder and the error, the pass's record ``write_error``; the next pass writes every pass.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from frx_plugin.collectives import Collectives, default_collectives
from frx_plugin.history import HistoryRecorder
from frx_plugin.loop import HISTORY_WRITE_FAILED, LoopState
from frx_plugin.model import ModelAdapter, model_device, unwrap
from frx_plugin.passes import (
    COUNTERFACTUAL_PATHS,
    MAX_ERROR_PAIRS,
    ON_ERROR,
    SIGNIFICANCE_SAMPLES,
    AnalysisConfig,
    PassPlan,
    check_positive,
    prepare_two_stage,
    run_pass,
    scalar_metrics,
)
from frx_plugin.probe import ProbeSet
from frx_plugin.report import Report
from frx_plugin.two_stage import TwoStageConfig

log = logging.getLogger("frx")


class ArcFaceTorchCallback:
    """An frx pass every ``every_n_steps`` steps of an arcface_torch loop (see the module).

    Args:
        probe: the probe set (images with identities and attributes) each pass embeds.
        out_dir: where ``history.json`` and ``history.safetensors`` go; a history already there is continued.
        every_n_steps: a pass when ``global_step % every_n_steps == 0``.
        writer: any object with ``add_scalar(tag, value, step)`` (``SummaryWriter``, tensorboardX's), or ``None``.
        wandb_run: a Weights & Biases run (anything with ``log(metrics, step=...)``), or ``None``.
        config: the leakage and verification options (:class:`frx_plugin.passes.AnalysisConfig`).
        on_error: "warn" (a failed pass is logged and skipped; a history that cannot be written is logged
            and written at the next pass) or "raise" (either raises, a history write after the writer has the pass).
        counterfactuals: "auto", "exact", "latent" or "off" (identity significance and error attribution).
        significance_samples: probe samples whose counterfactuals a pass makes (default 64; more
            narrows S_k's interval, each costing one face per attribute).
        max_error_pairs: errors of each kind a pass explains (default 8).
        decode_every_n_steps: the paper's two stages every that many steps (a multiple of
            ``every_n_steps``), or ``None`` (off: they train decoders).
        two_stage: the two stages' options (:class:`frx_plugin.two_stage.TwoStageConfig`).
        embed: which output of the backbone is the embedding (a callable ``(module, images) -> z``, an
            attribute path, or an output index or key); default the backbone's output, as arcface_torch's are.
        transform: the backbone's input from the probe's RGB in [0, 1]; default ``"arcface"``, arcface_torch's
            own ``(x - 0.5) / 0.5`` (its dataset's ``Normalize(mean=0.5, std=0.5)``); a callable, a preset
            (``"unit"``, ``"imagenet"``) or ``{"mean", "std", "scale", "channels"}`` otherwise.
    """

    def __init__(self, probe: ProbeSet, out_dir: str | Path = "frx-history", every_n_steps: int = 2000, writer: Any = None,
                 config: AnalysisConfig = AnalysisConfig(), on_error: str = "warn", counterfactuals: str = "auto",
                 significance_samples: int = SIGNIFICANCE_SAMPLES, max_error_pairs: int = MAX_ERROR_PAIRS, decode_every_n_steps: int | None = None,
                 two_stage: TwoStageConfig | None = None, embed: Any = None, transform: Any = "arcface",
                 wandb_run: Any = None) -> None:
        if not isinstance(probe, ProbeSet):
            raise TypeError(f"probe must be a frx_plugin.probe.ProbeSet, got {type(probe).__name__}")
        check_positive("every_n_steps", every_n_steps)
        check_positive("decode_every_n_steps", decode_every_n_steps, allow_none=True)
        if decode_every_n_steps is not None and decode_every_n_steps % every_n_steps:
            raise ValueError(f"decode_every_n_steps ({decode_every_n_steps}) must be a multiple of every_n_steps ({every_n_steps})")
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        if counterfactuals not in COUNTERFACTUAL_PATHS:
            raise ValueError(f"counterfactuals must be one of {COUNTERFACTUAL_PATHS}, got {counterfactuals!r}")
        if writer is not None and not callable(getattr(writer, "add_scalar", None)):
            raise TypeError(f"writer must have add_scalar(tag, value, step) (a SummaryWriter), got {type(writer).__name__}")
        if wandb_run is not None and not callable(getattr(wandb_run, "log", None)):
            raise TypeError(f"wandb_run must have log(metrics, step=...) (a wandb run), got {type(wandb_run).__name__}")
        self.wandb_run = wandb_run
        if two_stage is not None and not isinstance(two_stage, TwoStageConfig):
            raise TypeError(f"two_stage must be a frx_plugin.two_stage.TwoStageConfig, got {type(two_stage).__name__}")
        self.model_options = {"embed": embed, "transform": transform}
        ModelAdapter(torch.nn.Identity(), embed=embed if not isinstance(embed, str) else None, transform=transform)  # checked now
        self.probe, self.out_dir, self.every_n_steps = probe, Path(out_dir), every_n_steps
        self.writer, self.config, self.on_error = writer, config, on_error
        self.plan = PassPlan.for_probe(probe, config=config, counterfactuals=counterfactuals,
                                       significance_samples=significance_samples, max_error_pairs=max_error_pairs, on_error=on_error)
        self.decode_every_n_steps = decode_every_n_steps
        self.two_stage_config = two_stage or TwoStageConfig(seed=config.seed, n_bootstrap=config.n_bootstrap)
        if decode_every_n_steps is not None:
            from frx_plugin.plugins import require_decoder

            require_decoder(self.two_stage_config.decoder)  # an unknown name is an error now, not at the first pass
        self.loop = LoopState(probe, self.out_dir, self.model_options)
        self.history.check_folder()  # another probe set's history in out_dir is refused now
        self._collectives: Collectives | None = None
        self.last_report: Report | None = None

    @property
    def failures(self) -> list[dict[str, Any]]:
        """The passes that failed (``epoch``, ``global_step``, ``error``), as kept in the history."""
        return self.history.failures

    def __call__(self, global_step: int, backbone: Any, epoch: int | None = None) -> None:
        if global_step % self.every_n_steps == 0:
            self.run(global_step, backbone, epoch=epoch)

    def close(self) -> None:
        """Release what frx holds of the run (the gloo group it made where the default group is CUDA-only).

        Call it before ``destroy_process_group()``; frx also does it at exit if you do not.
        """
        close = getattr(self._collectives, "close", None)
        if callable(close):
            close()
        self._collectives = None

    # -- checkpoints: one more key in arcface_torch's checkpoint dict ------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The history (and the decoders' warm start): put it in the checkpoint as ``"state_frx"``.

        Plain containers and tensors only, so ``torch.load(..., weights_only=True)`` reads it.
        """
        return self.loop.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's ``"state_frx"``: its passes stand, the ones after it are re-run."""
        self.loop.load_state_dict(state)

    @property
    def history(self) -> HistoryRecorder:
        return self.loop.history

    @property
    def two_stage(self) -> Any:
        """The two-stage path's state (estimator, decoders), made at the first pass."""
        return self.loop.two_stage

    def _warn(self, message: str) -> None:
        if self._collectives is None or self._collectives.rank == 0:
            log.warning("%s", message)

    # -- the pass ----------------------------------------------------------------------------------------
    def _begin(self, module: Any) -> Collectives:
        """Once, at the first pass (every rank): the collectives, the folder's history, the two-stage path."""
        if self._collectives is None:
            self._collectives = default_collectives(model_device(module))
            for notice in list(self.plan.notices) + self.history.continue_existing():
                if self._collectives.rank == 0:
                    log.warning("frx: %s", notice)
            if self.decode_every_n_steps is not None:
                self.loop.attach_two_stage(prepare_two_stage(self.probe, self.two_stage_config, self._collectives))
        return self._collectives

    def run(self, global_step: int, backbone: Any, epoch: int | None = None) -> Report | None:
        """One pass now (every rank must call it: it runs collectives). Returns its report, or ``None`` if it failed."""
        module = unwrap(backbone)
        collectives = self._begin(module)
        model = self.loop.model(module, self._warn)
        decode = self.two_stage is not None and global_step % self.decode_every_n_steps == 0
        context = {"epoch": epoch, "global_step": global_step, "out_dir": str(self.out_dir), "framework": "arcface_torch"}
        result = run_pass(model, self.probe, self.plan, collectives, two_stage=self.two_stage if decode else None,
                          context=context)
        report = result.report
        if report is None:
            self.history.add_failure({"epoch": epoch, "global_step": global_step, "error": result.failure})
            if collectives.rank == 0:
                log.warning("frx: the analysis pass at step %d failed and is skipped; training goes on. %s", global_step, result.failure)
                self._scalars({"frx/pass_failed": 1.0}, global_step)
        else:
            report.epoch, report.global_step = epoch, global_step
            self.last_report = report
            self.history.add(report.to_record(), report.tensors)
            if collectives.rank == 0:
                self._publish(report, global_step)
        unwritten = None
        if collectives.rank == 0:  # after the writer and the log have the pass: a file error never costs them
            unwritten = self.loop.write_history(self._warn, raising=self.on_error == "raise")
            if unwritten is not None:
                self._scalars({HISTORY_WRITE_FAILED: 1.0}, global_step)
        # on_error="raise": every rank stops alike (rank 0 writes, the others wait for it)
        if self.on_error == "raise" and collectives.any(unwritten is not None):
            raise self.loop.history_error(unwritten)
        collectives.barrier()
        return report

    def _publish(self, report: Report, global_step: int) -> None:
        """Rank 0: the writer's scalars and one line in the training log."""
        self._scalars(scalar_metrics(report), global_step)
        for message in report.warnings:
            log.warning("frx (step %d): %s", global_step, message)
        log.info("frx: step %d %s", global_step, summary_line(report))

    def _scalars(self, scalars: dict[str, float], global_step: int) -> None:
        if self.writer is not None:
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, global_step)
        if self.wandb_run is not None:
            self.wandb_run.log(dict(scalars), step=global_step)


def summary_line(report: Report, shown: int = 3) -> str:
    """One line for a training log: TAR, the most and least leaked attributes, and the pass's seconds."""
    parts = []
    if report.verification is not None:
        parts.append(f"TAR@FMR={report.verification.fmr:g} {report.verification.tar:.4f}")
    ranked = sorted((a for a in report.leakage if a.leakage == a.leakage), key=lambda a: a.leakage, reverse=True)
    if ranked:
        parts.append("most leaked " + ", ".join(f"{a.name} {a.leakage:.3f}" for a in ranked[:shown]))
        parts.append("least leaked " + ", ".join(f"{a.name} {a.leakage:.3f}" for a in ranked[::-1][:shown]))
    if report.timing:
        parts.append(f"{sum(report.timing.values()):.1f}s")
    return "  ".join(parts)
