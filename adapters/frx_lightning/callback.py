"""The Lightning callback that runs an frx analysis pass every N epochs of training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

from frx_lightning.collectives import LightningCollectives
from frx_plugin.history import HistoryRecorder
from frx_plugin.loop import HISTORY_WRITE_FAILED, LoopState
from frx_plugin.model import ModelAdapter
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
from frx_plugin.two_stage import TwoStage, TwoStageConfig


def _no_passes(trainer: Trainer) -> bool:
    """``fast_dev_run`` (a smoke test of the loop) and the sanity check get no pass."""
    return bool(trainer.fast_dev_run) or bool(trainer.sanity_checking)


class AttributeRecoveryCallback(Callback):
    """Measure, as the model trains, how much of each attribute its embeddings keep.

    A pass embeds ``probe`` with the module, recovers every attribute on identity-disjoint folds,
    verifies, and makes counterfactuals; with ``decode_every_n_epochs`` it also runs the paper's two
    stages (decode z into faces, read the attributes off them). The pass is
    :func:`frx_plugin.passes.run_pass`, the one the arcface_torch callback and ``frx analyze`` run:
    this callback decides when it runs and where its numbers go.

    **When**: before training (epoch 0), after every ``every_n_epochs``-th epoch (the pass after
    training epoch ``e``, 0-based, is epoch ``e + 1``) and, with ``every_n_train_steps``, every that
    many optimizer steps. Never during ``fast_dev_run`` or the sanity check.

    **Where**: every logger of the Trainer and ``trainer.callback_metrics`` get
    ``frx/leakage/<attribute>`` (with ``/low`` and ``/high``), ``frx/auroc|r2/<attribute>``,
    ``frx/verification/tar_at_fmr_<fmr>``, ``frx/significance/<attribute>``, ``frx/errors/…``,
    ``frx/recovery/…`` (two stages) and ``frx/time/<part>_s``, so ``ModelCheckpoint(monitor=…)``
    and ``EarlyStopping(monitor="frx/leakage/age", mode="min")`` work on them (this callback runs
    its epoch-end pass before any ``EarlyStopping`` of the Trainer). The global-zero rank appends
    each pass to ``out_dir/history.json`` and ``history.safetensors`` after the loggers have it;
    an ``out_dir`` that already holds a history is continued (a new run's passes follow the old
    ones; a run resumed from a checkpoint replaces only the passes after it), never overwritten.
    A folder that cannot be written costs no pass: the loggers still get its scalars and
    ``frx/history_write_failed``, a warning names the folder and the error, the pass's record gets
    ``write_error``, and the next pass writes the files again with every pass in them.

    Under DDP each rank embeds its own disjoint shard; the probe statistics are summed across ranks
    through the strategy (tensors on its device: the GPU under NCCL), and the embeddings are
    gathered for verification. A pass that fails is reported through ``rank_zero_warn`` and kept
    in the history's ``failures``; training goes on unless ``on_error="raise"``.

    Args:
        probe: the probe set (images with identities and attributes) every pass embeds.
        out_dir: where the history goes; default ``<trainer.log_dir>/frx`` (the logger's version
            folder, else ``default_root_dir``).
        every_n_epochs: a pass after every that many training epochs.
        every_n_train_steps: also a pass every that many optimizer steps (``None``: off).
        n_folds: identity-disjoint folds of the probe heads.
        n_bootstrap: Poisson bootstrap replicates over identities for the intervals.
        fmr: the false-match rate that sets the verification threshold.
        batch_size: probe images embedded at once.
        seed: seed of the folds and the bootstrap.
        on_error: "warn" (a failed pass is reported and skipped; a history that cannot be written is
            reported and written at the next pass) or "raise" (either raises, a history write after the
            loggers have the pass).
        run_before_training: the epoch-0 pass before the first training step.
        counterfactuals: "auto" (exact where a generator registered through
            ``frx_register_generators`` renders the probe set, latent otherwise), "exact" (an error
            now if none can), "latent" or "off".
        significance_samples: probe samples whose counterfactuals give identity significance
            (default 64; more narrows S_k's interval, each costing one face per attribute).
        max_error_pairs: errors of each kind (false match, false non-match) a pass explains (default 8).
        decode_every_n_epochs: the two stages every that many epochs (a multiple of
            ``every_n_epochs``), or ``None`` (off: they train decoders).
        two_stage: the two stages' options (:class:`frx_plugin.two_stage.TwoStageConfig`).
        embed: which output of the module is the embedding: a callable ``(module, images) -> z``,
            an attribute path such as ``"backbone"``, or an output index or key; default the
            module's output (with a warning where frx must guess).
        transform: the module's input from the probe's RGB in [0, 1]: a callable, ``"unit"``,
            ``"arcface"`` (``(x - 0.5) / 0.5``), ``"imagenet"`` or ``{"mean", "std", "scale",
            "channels"}``; default [0, 1] as given, with a warning once.
        differentials: demographic differentials in every pass — FNMR and FMR per attribute group at the
            pass's global τ, their max/min ratios, FDR and GARBE with identity-bootstrap intervals, logged
            as ``frx/differential/<attribute>/{fnmr_ratio,fmr_ratio,fdr,garbe}`` (a ratio whose least rate
            is 0 is ∞: in the history, not logged); on by default (they reuse the verification's scores).
    """

    def __init__(
        self,
        probe: ProbeSet,
        out_dir: str | Path | None = None,
        every_n_epochs: int = 1,
        n_folds: int = 5,
        n_bootstrap: int = 200,
        fmr: float = 1e-3,
        batch_size: int = 256,
        seed: int = 0,
        on_error: str = "warn",
        run_before_training: bool = True,
        counterfactuals: str = "auto",
        significance_samples: int = SIGNIFICANCE_SAMPLES,
        max_error_pairs: int = MAX_ERROR_PAIRS,
        decode_every_n_epochs: int | None = None,
        two_stage: TwoStageConfig | None = None,
        every_n_train_steps: int | None = None,
        embed: Any = None,
        transform: Any = None,
        differentials: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(probe, ProbeSet):
            raise TypeError(f"probe must be a frx_plugin.probe.ProbeSet, got {type(probe).__name__}")
        check_positive("every_n_epochs", every_n_epochs)
        check_positive("every_n_train_steps", every_n_train_steps, allow_none=True)
        check_positive("decode_every_n_epochs", decode_every_n_epochs, allow_none=True)
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        if counterfactuals not in COUNTERFACTUAL_PATHS:
            raise ValueError(f"counterfactuals must be one of {COUNTERFACTUAL_PATHS}, got {counterfactuals!r}")
        if decode_every_n_epochs is not None and decode_every_n_epochs % every_n_epochs:
            raise ValueError(
                f"decode_every_n_epochs ({decode_every_n_epochs}) must be a multiple of every_n_epochs ({every_n_epochs}): "
                "a two-stage pass runs inside an analysis pass"
            )
        if two_stage is not None and not isinstance(two_stage, TwoStageConfig):
            raise TypeError(f"two_stage must be a frx_plugin.two_stage.TwoStageConfig, got {type(two_stage).__name__}")
        # checked now (a bad option is an error at construction, not at the first pass)
        self.model_options = {"embed": embed, "transform": transform}
        ModelAdapter(torch.nn.Identity(), embed=embed if not isinstance(embed, str) else None, transform=transform)
        self.config = AnalysisConfig(n_folds=n_folds, n_bootstrap=n_bootstrap, seed=seed, fmr=float(fmr), batch_size=batch_size,
                                     differentials=differentials)
        # decided once: exact when a generator can render the probe set (an error now if "exact" cannot be had)
        self.plan = PassPlan.for_probe(probe, config=self.config, counterfactuals=counterfactuals,
                                       significance_samples=significance_samples, max_error_pairs=max_error_pairs, on_error=on_error)
        for notice in self.plan.notices:
            rank_zero_warn(f"frx: {notice}")
        self.decode_every_n_epochs = decode_every_n_epochs
        self.two_stage_config = two_stage or TwoStageConfig(seed=seed, n_bootstrap=n_bootstrap)
        if decode_every_n_epochs is not None:
            from frx_plugin.plugins import require_decoder

            require_decoder(self.two_stage_config.decoder)  # an unknown name is an error now, not at the first pass
        self.probe = probe
        self._out_dir_option = out_dir
        self.every_n_epochs = every_n_epochs
        self.every_n_train_steps = every_n_train_steps
        self.on_error = on_error
        self.run_before_training = run_before_training
        #: the history, the two stages' warm start and the model contract; the history's folder is settled in
        #: ``setup`` when ``out_dir`` is not given
        self.loop = LoopState(probe, Path(out_dir) if out_dir is not None else Path("frx"), self.model_options)
        self.last_report: Report | None = None
        #: seconds of the last pass: ``embed_s`` (probe data and forward pass), ``after_embed_s`` (recovery,
        #: verification), ``counterfactual_s`` (rendering, embedding and scoring the changed faces), ``two_stage_s``
        self.last_timing: dict[str, float] = {}
        self._last_step_pass = -1

    @property
    def history(self) -> HistoryRecorder:
        return self.loop.history

    @property
    def two_stage(self) -> TwoStage | None:
        """The two-stage path's state (estimator, decoders); made in ``setup``, the global-zero rank first."""
        return self.loop.two_stage

    @property
    def out_dir(self) -> Path:
        """The history's folder (``<trainer.log_dir>/frx`` by default, settled in ``setup``)."""
        return self.history.out_dir

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
        return self._generate_state_key(out_dir=str(self._out_dir_option))

    # -- Lightning hooks -------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._out_dir_option is None:
            # trainer.log_dir is the logger's version folder (broadcast from rank 0: every rank calls it)
            self.history.out_dir = Path(trainer.log_dir or trainer.default_root_dir) / "frx"
        # a folder holding another probe set's history is refused before training, on every rank alike
        self.history.check_folder()
        self._run_before_early_stopping(trainer)
        if self.decode_every_n_epochs is None or self.two_stage is not None:
            return
        self.loop.attach_two_stage(prepare_two_stage(self.probe, self.two_stage_config, LightningCollectives(trainer)))
        for message in self.two_stage.warnings:
            rank_zero_warn(f"frx: {message}")

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if _no_passes(trainer):
            return
        # after a checkpoint was restored: continue the folder's history (or the checkpoint's)
        for notice in self.history.continue_existing():
            rank_zero_warn(f"frx: {notice}")
        if self.run_before_training and trainer.current_epoch == 0 and not self.history.has_epoch(0):
            self._run_pass(trainer, pl_module, epoch=0)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        n = self.every_n_train_steps
        step = trainer.global_step
        if n is None or _no_passes(trainer) or step == 0 or step % n or step == self._last_step_pass:
            return
        if trainer.is_last_batch and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            return  # the epoch-end pass comes at this very step
        self._run_pass(trainer, pl_module, epoch=trainer.current_epoch)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if epoch % self.every_n_epochs == 0 and not _no_passes(trainer):
            self._run_pass(trainer, pl_module, epoch=epoch)

    def _run_before_early_stopping(self, trainer: Trainer) -> None:
        """Put this callback before the Trainer's first ``EarlyStopping``, which reads the epoch-end metrics."""
        from lightning.pytorch.callbacks import EarlyStopping

        callbacks = trainer.callbacks
        if self not in callbacks:
            return
        stoppers = [i for i, c in enumerate(callbacks) if isinstance(c, EarlyStopping)]
        if stoppers and stoppers[0] < callbacks.index(self):
            callbacks.remove(self)
            callbacks.insert(stoppers[0], self)

    def state_dict(self) -> dict[str, Any]:
        return self.loop.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.loop.load_state_dict(state_dict)

    # -- the pass ----------------------------------------------------------
    def _run_pass(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> None:
        self._last_step_pass = trainer.global_step
        decode = self.two_stage is not None and epoch % self.decode_every_n_epochs == 0
        context = {"epoch": epoch, "global_step": trainer.global_step, "out_dir": str(self.out_dir), "framework": "lightning"}
        model = self.loop.model(pl_module, rank_zero_warn)
        model.forward_context = trainer.precision_plugin.forward_context  # embed as training runs: bf16-mixed's autocast, …
        result = run_pass(model, self.probe, self.plan, LightningCollectives(trainer),
                          two_stage=self.two_stage if decode else None, context=context)
        self.last_timing = dict(result.timing)
        unwritten: OSError | None = None
        if result.report is None:
            self.history.add_failure({"epoch": epoch, "global_step": trainer.global_step, "error": result.failure})
            rank_zero_warn(f"frx: the analysis pass at epoch {epoch} failed and is skipped; training goes on. {result.failure}")
            if trainer.is_global_zero:
                unwritten = self._publish(trainer, {"frx/pass_failed": 1.0, "frx/epoch": float(epoch)})  # the loggers say so too
        else:
            report = result.report
            report.epoch, report.global_step = epoch, trainer.global_step
            self.last_report = report
            self.history.add(report.to_record(), report.tensors)
            for message in report.warnings:
                rank_zero_warn(f"frx (epoch {epoch}): {message}")
            # every rank: ModelCheckpoint and EarlyStopping read callback_metrics (and reduce across ranks)
            metrics = dict(scalar_metrics(report), **{"frx/epoch": float(epoch)})
            for stale in [k for k in trainer.callback_metrics if k.startswith("frx/") and k not in metrics]:
                del trainer.callback_metrics[stale]  # a measure this pass has not (NaN) is not the last pass's
            trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})
            if trainer.is_global_zero:
                unwritten = self._publish(trainer, metrics)
                if result.decoded is not None:
                    self._publish_decoded(trainer, report, result.decoded, epoch)
        # on_error="raise": every rank stops alike (the global-zero rank writes, the others wait for it)
        if self.on_error == "raise" and LightningCollectives(trainer).any(unwritten is not None):
            raise self.loop.history_error(unwritten)
        trainer.strategy.barrier("frx_history_written")

    def _publish_decoded(self, trainer: Trainer, report: Report, decoded, epoch: int) -> None:
        """Global-zero only: ``decoded.png``, ``recovery.png`` and the decoded faces for image loggers."""
        from frx_plugin.figures import decoded_grid, plot_decoded, plot_recovery

        originals, faces, similarity = decoded
        try:  # the image loggers first: a folder that cannot be written never costs them the faces
            grid = decoded_grid(originals, faces)
            for logger in trainer.loggers:
                add_image = getattr(getattr(logger, "experiment", None), "add_image", None)
                if callable(add_image):
                    add_image("frx/decoded", grid, global_step=trainer.global_step, dataformats="CHW")
            plot_decoded(originals, faces, self.out_dir / "decoded.png", similarity=similarity,
                         title=f"epoch {epoch}: held-out faces and samples of G(z) (decoder trained on other identities)")
            if report.recovery is not None:
                plot_recovery(report.recovery, self.out_dir / "recovery.png", title=f"epoch {epoch}")
        except Exception as exc:  # noqa: BLE001 - a figure never costs the pass
            report.warnings.append(f"two-stage figures not written: {type(exc).__name__}: {exc}")
            rank_zero_warn(f"frx: the two-stage figures were not written to {self.out_dir}: {type(exc).__name__}: {exc}")

    def _publish(self, trainer: Trainer, metrics: dict[str, float]) -> OSError | None:
        """Global-zero only: log the scalars first, then write the history (a file error never costs the loggers).

        A history that cannot be written is a warning naming the folder, ``frx/history_write_failed`` in the
        loggers at the pass's step and ``write_error`` in the pass's record; returns that error.
        """
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        unwritten = self.loop.write_history(rank_zero_warn, raising=self.on_error == "raise")
        if unwritten is not None:
            for logger in trainer.loggers:
                logger.log_metrics({HISTORY_WRITE_FAILED: 1.0}, step=trainer.global_step)
        return unwritten
