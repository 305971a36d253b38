"""The Lightning callback that runs an frx analysis pass every N epochs of training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

from frx_lightning.collectives import LightningCollectives
from frx_plugin.config import AnalysisConfig, PassPlan, check_positive
from frx_plugin.history import HistoryRecorder
from frx_plugin.loop import AnalysisLoop
from frx_plugin.probe import ProbeSet
from frx_plugin.report import Report
from frx_plugin.sinks import PASS_FAILED
from frx_plugin.two_stage import TwoStage, TwoStageConfig


def _no_passes(trainer: Trainer) -> bool:
    """``fast_dev_run`` (a smoke test of the loop) and the sanity check get no pass."""
    # fast_dev_run and callbacks are set on the Trainer by its connectors; the class does not declare them
    return bool(trainer.fast_dev_run) or bool(trainer.sanity_checking)  # type: ignore[attr-defined]


class AttributeRecoveryCallback(Callback):
    """Measure, as the model trains, how much of each attribute its embeddings keep.

    A pass embeds ``probe`` with the module, recovers every attribute on identity-disjoint folds,
    verifies, and makes counterfactuals; with ``decode_every_n_epochs`` it also runs the paper's two
    stages (decode z into faces, read the attributes off them). The pass is
    :func:`frx_plugin.passes.run_pass`, the one the arcface_torch callback and ``frx analyze`` run, and
    what happens around it (schedule, history, error policy) is :class:`frx_plugin.loop.AnalysisLoop`:
    this callback says when (epochs, steps) and where the numbers go (loggers, ``callback_metrics``).

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
        config: what a pass measures (:class:`frx_plugin.config.AnalysisConfig`: folds, bootstrap, FMR,
            heads, differentials, counterfactuals and their budget); any of its fields may also be given
            as a keyword here (``n_bootstrap=50``, ``head="logistic"``, …), which overrides the config's.
        on_error: "warn" (a failed pass is reported and skipped; a history that cannot be written is
            reported and written at the next pass) or "raise" (either raises, a history write after the
            loggers have the pass).
        run_before_training: the epoch-0 pass before the first training step.
        decode_every_n_epochs: the two stages every that many epochs (a multiple of
            ``every_n_epochs``), or ``None`` (off: they train decoders).
        two_stage: the two stages' options (:class:`frx_plugin.two_stage.TwoStageConfig`).
        embed: which output of the module is the embedding: a callable ``(module, images) -> z``,
            an attribute path such as ``"backbone"``, or an output index or key; default the
            module's output (with a warning where frx must guess).
        transform: the module's input from the probe's RGB in [0, 1]: a callable, ``"unit"``,
            ``"arcface"`` (``(x - 0.5) / 0.5``), ``"imagenet"`` or ``{"mean", "std", "scale",
            "channels"}``; default [0, 1] as given, with a warning once.
        **config_fields: fields of :class:`~frx_plugin.config.AnalysisConfig` — ``n_folds``, ``n_bootstrap``,
            ``seed``, ``fmr``, ``batch_size``, ``head``, ``C``, ``min_class_samples``, ``differentials`` (on by
            default: FNMR and FMR per attribute group at the pass's τ, their ratios, FDR and GARBE, logged as
            ``frx/differential/<attribute>/…``), ``differential_*``, ``counterfactuals`` ("auto": exact where a
            registered generator renders the probe set, latent otherwise; "exact", "latent", "off"),
            ``significance_samples`` and ``max_error_pairs`` (default: scaled to the probe set, so that a pass
            with counterfactuals costs at most about twice one without).
    """

    def __init__(
        self,
        probe: ProbeSet,
        out_dir: str | Path | None = None,
        config: AnalysisConfig = AnalysisConfig(),
        *,
        every_n_epochs: int = 1,
        every_n_train_steps: int | None = None,
        on_error: str = "warn",
        run_before_training: bool = True,
        decode_every_n_epochs: int | None = None,
        two_stage: TwoStageConfig | None = None,
        embed: Any = None,
        transform: Any = None,
        **config_fields: Any,
    ) -> None:
        super().__init__()
        if not isinstance(config, AnalysisConfig):
            raise TypeError(f"config must be a frx_plugin.config.AnalysisConfig, got {type(config).__name__}")
        check_positive("every_n_epochs", every_n_epochs)
        #: what happens around each pass, in the core: schedule, history, error policy (sinks are added in ``setup``)
        self.loop = AnalysisLoop(
            probe, out_dir, config.updated(**config_fields), embed=embed,
            transform=transform, every_n_epochs=every_n_epochs, every_n_steps=every_n_train_steps,
            decode_every_n_epochs=decode_every_n_epochs, run_before_training=run_before_training, two_stage=two_stage,
            on_error=on_error, warn=rank_zero_warn, framework="lightning",
        )
        self.probe, self.config = probe, self.loop.config
        self._out_dir_option = out_dir

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
        return self.loop.out_dir

    @property
    def plan(self) -> PassPlan | None:
        """What a pass measures (the counterfactual path decided), made in ``setup``."""
        return self.loop.plan

    @property
    def counterfactual_path(self) -> str | None:
        """The counterfactual path decided for the probe set in ``setup``: "exact", "latent", or ``None`` (off)."""
        return None if self.loop.plan is None else self.loop.plan.counterfactuals

    @property
    def failures(self) -> list[dict[str, Any]]:
        """The passes that failed (``epoch``, ``global_step``, ``error``), as kept in the history."""
        return self.history.failures

    @property
    def last_report(self) -> Report | None:
        return self.loop.last_report

    @property
    def last_timing(self) -> dict[str, float]:
        """Seconds of the last pass: ``embed_s`` (probe data and forward pass), ``after_embed_s`` (recovery,
        verification), ``counterfactual_s`` (rendering, embedding and scoring the changed faces), ``two_stage_s``."""
        return {} if self.loop.last_result is None else dict(self.loop.last_result.timing)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(out_dir=str(self._out_dir_option))

    # -- Lightning hooks -------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._out_dir_option is None:
            # trainer.log_dir is the logger's version folder (broadcast from rank 0: every rank calls it)
            self.loop.out_dir = Path(trainer.log_dir or trainer.default_root_dir) / "frx"
        # a folder holding another probe set's history is refused before training, on every rank alike
        self.history.check_folder()
        self._run_before_early_stopping(trainer)
        self.loop.sinks = [CallbackMetricsSink(trainer), LoggersSink(trainer)]
        self.loop.begin(LightningCollectives(trainer))  # the plan, and the two stages (the global-zero rank first)

    def _module(self, trainer: Trainer, pl_module: LightningModule) -> LightningModule:
        # embed as training runs: bf16-mixed's autocast, …
        self.loop.model(pl_module).forward_context = trainer.precision_plugin.forward_context
        return pl_module

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not _no_passes(trainer):  # after a checkpoint was restored: continue the folder's history (or the checkpoint's)
            self.loop.train_start(self._module(trainer, pl_module), step=trainer.global_step, epoch=trainer.current_epoch)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not _no_passes(trainer) and trainer.global_step > 0:  # no optimizer step yet (gradient accumulation)
            self.loop.step(self._module(trainer, pl_module), trainer.global_step, epoch=trainer.current_epoch,
                           epoch_ends=trainer.is_last_batch)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not _no_passes(trainer):
            self.loop.epoch_end(self._module(trainer, pl_module), trainer.current_epoch + 1, trainer.global_step)

    def _run_before_early_stopping(self, trainer: Trainer) -> None:
        """Put this callback before the Trainer's first ``EarlyStopping``, which reads the epoch-end metrics."""
        from lightning.pytorch.callbacks import EarlyStopping

        callbacks = trainer.callbacks  # type: ignore[attr-defined]  # (see _no_passes)
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


class CallbackMetricsSink:
    """Every rank: ``trainer.callback_metrics``, which ``ModelCheckpoint`` and ``EarlyStopping`` read (and reduce
    across ranks). A failed pass leaves the last pass's values; a measure this pass has not is removed."""

    every_rank = True

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def log_scalars(self, scalars: dict[str, float], step: int) -> None:
        if PASS_FAILED in scalars:
            return
        metrics = self.trainer.callback_metrics
        for stale in [k for k in metrics if k.startswith("frx/") and k not in scalars]:
            del metrics[stale]  # a measure this pass has not (NaN) is not the last pass's
        metrics.update({k: torch.tensor(v) for k, v in scalars.items()})


class LoggersSink:
    """The global-zero rank: every logger of the Trainer (scalars; images where its experiment has ``add_image``)."""

    every_rank = False

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def log_scalars(self, scalars: dict[str, float], step: int) -> None:
        for logger in self.trainer.loggers:
            logger.log_metrics(scalars, step=step)

    def log_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        for logger in self.trainer.loggers:
            add_image = getattr(getattr(logger, "experiment", None), "add_image", None)
            if callable(add_image):
                add_image(tag, image, global_step=step, dataformats="CHW")
