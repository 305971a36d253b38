"""The Lightning callback that runs an frx analysis pass every N epochs of training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

from frx_lightning.collectives import LightningCollectives
from frx_plugin.history import HistoryRecorder
from frx_plugin.passes import COUNTERFACTUAL_PATHS, ON_ERROR, AnalysisConfig, PassPlan, prepare_two_stage, run_pass, scalar_metrics
from frx_plugin.probe import ProbeSet
from frx_plugin.report import Report
from frx_plugin.two_stage import TwoStage, TwoStageConfig


class AttributeRecoveryCallback(Callback):
    """Measure, every ``every_n_epochs``, how much of each attribute the embeddings of the trained module keep.

    A pass embeds ``probe`` with the module (through the ``frx_embed`` hook;
    default: call the module and L2-normalise), recovers every attribute on
    identity-disjoint folds and logs ``frx/leakage/<attribute>`` (with
    ``/low`` and ``/high`` interval bounds) and the verification TAR to every
    logger of the Trainer. The first pass runs before training (epoch 0);
    the pass after training epoch ``e`` (0-based) is epoch ``e + 1``. Each
    pass is appended to ``out_dir/history.json`` and
    ``out_dir/history.safetensors`` by the global-zero rank.

    Counterfactuals (DESIGN.md §2) run in the same pass: identity significance
    ``frx/significance/<attribute>`` (with ``/low`` and ``/high``) from
    ``significance_samples`` probe samples, and error attribution
    ``frx/errors/<attribute>`` (share of the explained errors the attribute
    decides; also per kind, ``frx/errors/false_non_match/…`` and
    ``…/false_match/…``) over at most ``max_error_pairs`` errors of each kind
    at the verification threshold. ``counterfactuals``: "auto" (exact when a
    generator registered through ``frx_register_generators`` can render the
    probe set, latent otherwise), "exact" (an error at once if none can),
    "latent" or "off".

    The paper's two stages (decode z into faces, read the attributes off them;
    :mod:`frx_plugin.two_stage`) run every ``decode_every_n_epochs`` epochs
    (off by default: they train decoders), with the options of ``two_stage``
    (:class:`~frx_plugin.two_stage.TwoStageConfig`; its decoder and estimator come
    from the ``frx_register_decoders`` and ``frx_register_estimators`` hooks).
    They log ``frx/recovery/<attribute>`` (recovery significance R_k of the
    two-stage path, with ``/low`` and ``/high``), ``frx/recovery_direct/<attribute>``
    (the same measure from the probe heads), ``frx/recovery_spread/<attribute>``
    and ``frx/decoder/identity_similarity``, write ``decoded.png`` and
    ``recovery.png`` to ``out_dir``, and log the decoded faces as an image to
    every logger that takes images (TensorBoard). The decoders are warm-started
    from the previous pass. A decoder that diverges is reported in the pass's
    warnings and the run goes on. Under DDP each process trains the decoders of
    its own folds.

    The pass's cost is logged too, as ``frx/time/embed_s`` (probe data and
    forward pass), ``frx/time/after_embed_s`` (recovery, verification,
    history), ``frx/time/counterfactual_s`` and ``frx/time/two_stage_s``, and
    kept in ``last_timing``.

    Under DDP each rank embeds its own disjoint shard; the probe statistics are
    summed across ranks (every rank runs every collective), and the embeddings
    are gathered only for verification, which compares every pair.

    Errors in a pass are reported through ``rank_zero_warn`` and kept in the
    history's ``failures``; training goes on, unless ``on_error="raise"``.

    The pass itself is :func:`frx_plugin.passes.run_pass`, the one every frx
    adapter and command runs; this callback decides when it runs and where
    its numbers go. An ``out_dir`` that already holds a history is continued
    (the passes of a new run follow the old ones; a run resumed from a
    checkpoint replaces only the passes after it), never overwritten.
    """

    def __init__(
        self,
        probe: ProbeSet,
        out_dir: str | Path = "frx-history",
        every_n_epochs: int = 1,
        n_folds: int = 5,
        n_bootstrap: int = 200,
        fmr: float = 1e-3,
        batch_size: int = 256,
        seed: int = 0,
        on_error: str = "warn",
        run_before_training: bool = True,
        counterfactuals: str = "auto",
        significance_samples: int = 128,
        max_error_pairs: int = 16,
        decode_every_n_epochs: int | None = None,
        two_stage: TwoStageConfig | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(probe, ProbeSet):
            raise TypeError(f"probe must be a frx_plugin.probe.ProbeSet, got {type(probe).__name__}")
        if not isinstance(every_n_epochs, int) or isinstance(every_n_epochs, bool) or every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be a positive integer, got {every_n_epochs!r}")
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        if counterfactuals not in COUNTERFACTUAL_PATHS:
            raise ValueError(f"counterfactuals must be one of {COUNTERFACTUAL_PATHS}, got {counterfactuals!r}")
        self.config = AnalysisConfig(n_folds=n_folds, n_bootstrap=n_bootstrap, seed=seed, fmr=float(fmr), batch_size=batch_size)
        # decided once: exact when a generator can render the probe set (an error now if "exact" cannot be had)
        self.plan = PassPlan.for_probe(probe, config=self.config, counterfactuals=counterfactuals,
                                       significance_samples=significance_samples, max_error_pairs=max_error_pairs, on_error=on_error)
        for notice in self.plan.notices:
            rank_zero_warn(f"frx: {notice}")
        if decode_every_n_epochs is not None and (
            not isinstance(decode_every_n_epochs, int) or isinstance(decode_every_n_epochs, bool) or decode_every_n_epochs < 1
        ):
            raise ValueError(f"decode_every_n_epochs must be a positive integer or None (off), got {decode_every_n_epochs!r}")
        if decode_every_n_epochs is not None and decode_every_n_epochs % every_n_epochs:
            raise ValueError(
                f"decode_every_n_epochs ({decode_every_n_epochs}) must be a multiple of every_n_epochs ({every_n_epochs}): "
                "a two-stage pass runs inside an analysis pass"
            )
        if two_stage is not None and not isinstance(two_stage, TwoStageConfig):
            raise TypeError(f"two_stage must be a frx_plugin.two_stage.TwoStageConfig, got {type(two_stage).__name__}")
        self.decode_every_n_epochs = decode_every_n_epochs
        self.two_stage_config = two_stage or TwoStageConfig(seed=seed, n_bootstrap=n_bootstrap)
        if decode_every_n_epochs is not None:
            from frx_plugin.plugins import require_decoder

            require_decoder(self.two_stage_config.decoder)  # an unknown name is an error now, not at the first pass
        #: the two-stage path's state (estimator, decoders); made in ``setup``, the global-zero rank first
        self.two_stage: TwoStage | None = None
        self._two_stage_state: dict[str, torch.Tensor] = {}
        self.probe = probe
        self.out_dir = Path(out_dir)
        self.every_n_epochs = every_n_epochs
        self.on_error = on_error
        self.run_before_training = run_before_training
        self.history = HistoryRecorder(self.out_dir, probe.schema)
        self.last_report: Report | None = None
        #: seconds of the last pass: ``embed_s`` (probe data and forward pass), ``after_embed_s`` (recovery,
        #: verification), ``counterfactual_s`` (rendering, embedding and scoring the changed faces), ``two_stage_s``
        self.last_timing: dict[str, float] = {}

    @property
    def counterfactual_path(self) -> str | None:
        """The counterfactual path decided for the probe set: "exact", "latent", or ``None`` (off)."""
        return self.plan.counterfactuals

    @property
    def failures(self) -> list[dict[str, Any]]:
        """The passes that failed (``epoch``, ``global_step``, ``error``), as kept in the history."""
        return self.history.failures

    @property
    def state_key(self) -> str:
        return self._generate_state_key(out_dir=str(self.out_dir))

    # -- Lightning hooks -------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # a folder holding another probe set's history is refused before training, on every rank alike
        self.history.check_folder()
        if self.decode_every_n_epochs is None or self.two_stage is not None:
            return
        self.two_stage = prepare_two_stage(self.probe, self.two_stage_config, LightningCollectives(trainer))
        assert self.two_stage is not None
        if self._two_stage_state:
            self.two_stage.load_state_dict(self._two_stage_state)
        for message in self.two_stage.warnings:
            rank_zero_warn(f"frx: {message}")

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # after a checkpoint was restored: continue the folder's history (or the checkpoint's)
        for notice in self.history.continue_existing():
            rank_zero_warn(f"frx: {notice}")
        if self.run_before_training and trainer.current_epoch == 0 and not self.history.has_epoch(0):
            self._run_pass(trainer, pl_module, epoch=0)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if epoch % self.every_n_epochs == 0:
            self._run_pass(trainer, pl_module, epoch=epoch)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"history": self.history.state_dict()}
        if self.two_stage is not None:
            state["two_stage"] = self.two_stage.state_dict()  # the decoders' warm start survives a resume
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history.load_state_dict(state_dict["history"])
        self._two_stage_state = dict(state_dict.get("two_stage", {}))
        if self.two_stage is not None and self._two_stage_state:
            self.two_stage.load_state_dict(self._two_stage_state)

    # -- the pass ----------------------------------------------------------
    def _run_pass(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> None:
        decode = self.two_stage is not None and epoch % self.decode_every_n_epochs == 0
        context = {"epoch": epoch, "global_step": trainer.global_step, "out_dir": str(self.out_dir), "framework": "lightning"}
        result = run_pass(pl_module, self.probe, self.plan, LightningCollectives(trainer),
                          two_stage=self.two_stage if decode else None, context=context)
        self.last_timing = dict(result.timing)
        if result.report is None:
            self.history.add_failure({"epoch": epoch, "global_step": trainer.global_step, "error": result.failure})
            rank_zero_warn(f"frx: the analysis pass at epoch {epoch} failed and is skipped; training goes on. {result.failure}")
            if trainer.is_global_zero:
                self._write_history()
        else:
            report = result.report
            report.epoch, report.global_step = epoch, trainer.global_step
            self.last_report = report
            self.history.add(report.to_record(), report.tensors)
            for message in report.warnings:
                rank_zero_warn(f"frx (epoch {epoch}): {message}")
            if trainer.is_global_zero:
                self._publish(trainer, report, epoch)
                if result.decoded is not None:
                    self._publish_decoded(trainer, report, result.decoded, epoch)
        trainer.strategy.barrier("frx_history_written")

    def _write_history(self) -> None:
        try:
            self.history.write()
        except OSError as exc:  # the loggers already have the pass; the files will be written with the next one
            rank_zero_warn(f"frx: the history could not be written to {self.out_dir} ({exc}); the pass is kept in memory and logged")

    def _publish_decoded(self, trainer: Trainer, report: Report, decoded, epoch: int) -> None:
        """Global-zero only: ``decoded.png``, ``recovery.png`` and the decoded faces for image loggers."""
        from frx_plugin.figures import decoded_grid, plot_decoded, plot_recovery

        originals, faces, similarity = decoded
        try:
            plot_decoded(originals, faces, self.out_dir / "decoded.png", similarity=similarity,
                         title=f"epoch {epoch}: held-out faces and samples of G(z) (decoder trained on other identities)")
            if report.recovery is not None:
                plot_recovery(report.recovery, self.out_dir / "recovery.png", title=f"epoch {epoch}")
            grid = decoded_grid(originals, faces)
            for logger in trainer.loggers:
                add_image = getattr(getattr(logger, "experiment", None), "add_image", None)
                if callable(add_image):
                    add_image("frx/decoded", grid, global_step=trainer.global_step, dataformats="CHW")
        except Exception as exc:  # noqa: BLE001 - a figure never costs the pass
            report.warnings.append(f"two-stage figures not written: {type(exc).__name__}: {exc}")
            rank_zero_warn(f"frx: the two-stage figures were not written: {exc}")

    def _publish(self, trainer: Trainer, report: Report, epoch: int) -> None:
        """Global-zero only: log the scalars first, then write the history (a file error never costs the loggers)."""
        metrics = dict(scalar_metrics(report), **{"frx/epoch": float(epoch)})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        self._write_history()
