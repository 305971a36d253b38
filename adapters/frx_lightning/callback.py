"""The Lightning callback that runs an frx analysis pass every N epochs of training."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

from frx_plugin.analysis import (
    COUNTERFACTUAL_PATHS,
    ON_ERROR,
    AnalysisConfig,
    choose_counterfactual_path,
    counterfactual_measures,
    generator_attributes,
    embed_probe_set,
    hook_embedder,
    probe_leakage,
    scalar_metrics,
)
from frx_plugin.counterfactual import CounterfactualError, exact_embedder, latent_embedder, latent_model
from frx_plugin.history import HistoryRecorder
from frx_plugin.plugins import get_plugin_manager
from frx_plugin.probe import ProbeSet
from frx_plugin.errors import AnalysisError
from frx_plugin.report import Report
from frx_plugin.two_stage import TwoStage, TwoStageConfig
from frx_plugin.verification import verification


def shard_indices(trainer: Trainer, n: int) -> torch.Tensor:
    """This rank's disjoint share of ``n`` samples: ``rank, rank + W, …`` (no padding, no repeats)."""
    return torch.arange(trainer.global_rank, n, trainer.world_size)


def _any_rank(trainer: Trainer, flag: bool) -> bool:
    """Whether ``flag`` holds on any rank (every rank must call this: one small all-gather)."""
    if trainer.world_size == 1:
        return flag
    flags = trainer.strategy.all_gather(torch.tensor([1.0 if flag else 0.0], device=trainer.strategy.root_device))
    return bool(flags.max() > 0)


def gather_embeddings(trainer: Trainer, local: torch.Tensor, n: int) -> torch.Tensor:
    """Reassemble all N embeddings in order on every rank from each rank's :func:`shard_indices` share.

    The padding added for the collective is cut off again, so no sample appears twice.
    """
    world = trainer.world_size
    if world == 1:
        return local
    per_rank = math.ceil(n / world)
    dim = torch.tensor([local.shape[1] if local.numel() else 0], device=trainer.strategy.root_device)
    dim = int(trainer.strategy.all_gather(dim).max())
    padded = torch.zeros(per_rank, dim, dtype=torch.float32, device=trainer.strategy.root_device)
    padded[: local.shape[0]] = local.to(padded.device)
    gathered = trainer.strategy.all_gather(padded).cpu()  # (W, per_rank, D)
    full = torch.empty(n, dim, dtype=torch.float32)
    for r in range(world):
        count = len(range(r, n, world))
        full[r::world] = gathered[r, :count]
    return full


def _merge_ranks(trainer: Trainer, local: torch.Tensor) -> torch.Tensor:
    """Every rank's tensor of the same shape, NaN where the rank has nothing; the ranks' entries merged (one all-gather)."""
    gathered = trainer.strategy.all_gather(local.to(trainer.strategy.root_device)).cpu()  # (W, ...)
    merged = gathered[0].clone()
    for part in gathered[1:]:
        merged = torch.where(torch.isnan(merged), part, merged)
    return merged


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

    Errors in a pass are reported through ``rank_zero_warn`` and training
    goes on, unless ``on_error="raise"``.
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
        for name, value in (("significance_samples", significance_samples), ("max_error_pairs", max_error_pairs)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        # decided once: exact when a generator can render the probe set (an error now if "exact" cannot be had)
        self.counterfactual_path, self._generator = (
            (None, None) if counterfactuals == "off" else choose_counterfactual_path(probe, counterfactuals)
        )
        if counterfactuals == "auto" and self.counterfactual_path == "latent":
            rank_zero_warn(
                f"frx: no generator (hook frx_register_generators) can render {probe.source}; identity significance and "
                "error attribution use the latent path (pass counterfactuals='exact' to require a generator, 'off' to skip)"
            )
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
        self.significance_samples = significance_samples
        self.max_error_pairs = max_error_pairs
        self.config = AnalysisConfig(n_folds=n_folds, n_bootstrap=n_bootstrap, seed=seed, fmr=float(fmr), batch_size=batch_size)
        self.probe = probe
        self.out_dir = Path(out_dir)
        self.every_n_epochs = every_n_epochs
        self.on_error = on_error
        self.run_before_training = run_before_training
        self.history = HistoryRecorder(self.out_dir, probe.schema)
        self.failures: list[dict[str, Any]] = []
        self.last_report: Report | None = None
        #: seconds of the last pass: ``embed_s`` (probe data and forward pass), ``after_embed_s`` (recovery,
        #: verification, history) and ``counterfactual_s`` (rendering, embedding and scoring the changed faces)
        self.last_timing: dict[str, float] = {}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(out_dir=str(self.out_dir))

    # -- Lightning hooks -------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.decode_every_n_epochs is None or self.two_stage is not None:
            return
        # the estimator may train and cache itself on first use: the global-zero rank first, the others then load it.
        # A configuration error (no estimator, shapes that do not fit) stops every rank alike, never one alone.
        problem: BaseException | None = None
        for turn in (True, False):
            if trainer.is_global_zero == turn and problem is None:
                try:
                    self.two_stage = TwoStage(self.probe, self.two_stage_config)
                except Exception as exc:  # noqa: BLE001 - raised below on every rank
                    problem = exc
            if turn:
                trainer.strategy.barrier("frx_estimator_ready")
        if _any_rank(trainer, problem is not None):
            raise problem or RuntimeError("frx: the two-stage path could not be set up on another process (see its error)")
        assert self.two_stage is not None
        if self._two_stage_state:
            self.two_stage.load_state_dict(self._two_stage_state)
        for message in self.two_stage.warnings:
            rank_zero_warn(f"frx: {message}")

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.run_before_training and trainer.current_epoch == 0 and not self.history.has_epoch(0):
            self._run_pass(trainer, pl_module, epoch=0)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if epoch % self.every_n_epochs == 0:
            self._run_pass(trainer, pl_module, epoch=epoch)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"history": self.history.state_dict(), "failures": list(self.failures)}
        if self.two_stage is not None:
            state["two_stage"] = self.two_stage.state_dict()  # the decoders' warm start survives a resume
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history.load_state_dict(state_dict["history"])
        self.failures = list(state_dict.get("failures", []))
        self._two_stage_state = dict(state_dict.get("two_stage", {}))
        if self.two_stage is not None and self._two_stage_state:
            self.two_stage.load_state_dict(self._two_stage_state)

    # -- the pass ----------------------------------------------------------
    def _run_pass(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> None:
        try:
            started = time.perf_counter()
            indices = shard_indices(trainer, len(self.probe))
            problem: BaseException | None = None
            try:
                local = embed_probe_set(pl_module, self.probe, indices, self.config.batch_size)
                bad = int((~torch.isfinite(local).all(1)).sum()) if local.numel() else 0
                if bad:
                    problem = AnalysisError(
                        f"embeddings contain NaN or infinity in {bad} of this process's {local.shape[0]} probe rows — did the training diverge?"
                    )
            except Exception as exc:  # noqa: BLE001 - reported below, on every rank alike
                problem = exc
            # every rank learns whether any rank failed before the first collective of the pass, so a failure
            # on one process skips the pass everywhere instead of leaving the others waiting in a collective
            if _any_rank(trainer, problem is not None):
                raise problem or RuntimeError("the analysis pass failed on another process; it is skipped on every process")
            embedded = time.perf_counter()
            # leakage: every rank streams its own shard; the statistics are summed across ranks
            report = probe_leakage(local, self.probe, self.config, indices, distributed=trainer.world_size > 1)
            # verification compares every pair, so it needs all embeddings on every rank
            embeddings = gather_embeddings(trainer, local, len(self.probe))
            report.verification = verification(embeddings, self.probe.identity, fmr=self.config.fmr)
            counterfactual_s = 0.0
            if self.counterfactual_path is not None:
                counterfactual_start = time.perf_counter()
                self._counterfactuals(trainer, pl_module, embeddings, report)
                counterfactual_s = time.perf_counter() - counterfactual_start
            two_stage_s, decoded = 0.0, None
            if self.two_stage is not None and epoch % self.decode_every_n_epochs == 0:
                two_stage_start = time.perf_counter()
                decoded = self._two_stage_pass(trainer, pl_module, embeddings, report)
                two_stage_s = time.perf_counter() - two_stage_start
            report.epoch, report.global_step = epoch, trainer.global_step
            self.last_report = report
            self.history.add(report.to_record(), report.tensors)
            for message in report.warnings:
                rank_zero_warn(f"frx (epoch {epoch}): {message}")
            if trainer.is_global_zero:
                self._publish(trainer, report, epoch)
                if decoded is not None:
                    self._publish_decoded(trainer, report, decoded, epoch)
            # the pass's cost, split where the user's model stops working: embedding (data + forward) and the rest
            self.last_timing = {
                "embed_s": embedded - started,
                "after_embed_s": time.perf_counter() - embedded - counterfactual_s - two_stage_s,
                "counterfactual_s": counterfactual_s,
                "two_stage_s": two_stage_s,
            }
            if trainer.is_global_zero:
                for logger in trainer.loggers:
                    logger.log_metrics({f"frx/time/{k}": v for k, v in self.last_timing.items()}, step=trainer.global_step)
        except Exception as exc:
            if self.on_error == "raise":
                raise
            self.failures.append({"epoch": epoch, "global_step": trainer.global_step, "error": f"{type(exc).__name__}: {exc}"})
            rank_zero_warn(f"frx: the analysis pass at epoch {epoch} failed and is skipped; training goes on. {type(exc).__name__}: {exc}")
        trainer.strategy.barrier("frx_history_written")

    def _counterfactuals(self, trainer: Trainer, pl_module: LightningModule, embeddings: torch.Tensor, report: Report) -> None:
        """Identity significance and error attribution (every rank, same inputs, same collectives)."""
        attributes = None
        if self.counterfactual_path == "exact":
            attributes, unchanged = generator_attributes(self.probe, self._generator)
            if unchanged:
                report.warnings.append(f"counterfactuals: the generator cannot change {unchanged}; they are left out")
            base = exact_embedder(pl_module, self._generator, self.config.batch_size)

            def embed(rows: torch.Tensor, attribute: str, values: torch.Tensor) -> torch.Tensor:
                # each rank renders and embeds its share of the changed faces; all ranks get all of them
                mine = torch.arange(trainer.global_rank, rows.numel(), trainer.world_size)
                # a rank with no share still takes part in the gather, with an empty (0, D) block; a rank whose
                # share fails sends NaN, so every rank sees the failure after the gather and stops alike
                try:
                    local = base(rows[mine], attribute, values[mine]) if mine.numel() else torch.empty(0, embeddings.shape[1])
                    failure = None
                except Exception as exc:  # noqa: BLE001 - re-raised below
                    local, failure = torch.full((mine.numel(), embeddings.shape[1]), math.nan), exc
                gathered = gather_embeddings(trainer, local, rows.numel())
                if failure is not None:
                    raise failure
                if not bool(torch.isfinite(gathered).all()):
                    raise CounterfactualError(f"changed faces of {attribute!r} could not be embedded on every process (NaN)")
                return gathered
        else:
            model = latent_model(
                embeddings, self.probe.labels, self.probe.schema, report.tensors["probe_directions"], report.tensors["probe_bias"],
                held_out={a.name: a.value for a in report.leakage},
            )
            embed = latent_embedder(model, embeddings, self.probe.labels)
        try:
            counterfactual_measures(
                embeddings, self.probe, report, self.config, embed, path=self.counterfactual_path,
                significance_samples=self.significance_samples, max_error_pairs=self.max_error_pairs, attributes=attributes,
            )
        except Exception as exc:  # noqa: BLE001 - leakage and verification of the pass still count
            # data that allows no counterfactual (too few impostor pairs for τ, …) is a warning; any other
            # failure follows on_error. Both happen on every rank alike (the inputs are the same everywhere).
            if self.on_error == "raise" and not isinstance(exc, AnalysisError):
                raise
            report.warnings.append(f"counterfactuals skipped: {type(exc).__name__}: {exc}")

    def _two_stage_pass(self, trainer: Trainer, pl_module: LightningModule, embeddings: torch.Tensor, report: Report):
        """Decoders and estimator (every rank; each trains the decoders of its own folds). Returns the figure's faces."""
        two_stage = self.two_stage
        assert two_stage is not None
        rank, world = trainer.global_rank, trainer.world_size
        folds = list(range(rank, two_stage.config.n_folds, world))
        results, problem = [], None
        try:
            embed = hook_embedder(pl_module)
            results = [two_stage.run_fold(f, embeddings, pl_module, embed) for f in folds]
        except Exception as exc:  # noqa: BLE001 - every rank learns of it below, before the gather
            problem = exc
        if _any_rank(trainer, problem is not None):
            message = f"{type(problem).__name__}: {problem}" if problem else "it failed on another process"
            report.warnings.append(f"two-stage recovery skipped: {message}")
            if self.on_error == "raise" and problem is not None and not isinstance(problem, AnalysisError):
                raise problem
            return None
        # each fold's readings and fit summary, NaN where another rank owns the fold; merged after one gather each
        width = (len(two_stage.attributes) + 1) * two_stage.config.samples
        mine = torch.full((len(self.probe), width), math.nan, dtype=torch.float64)
        for r in results:
            mine = torch.where(torch.isnan(mine), two_stage.pack(r), mine)
        summary = torch.full((two_stage.config.n_folds, 5), math.nan, dtype=torch.float64)
        for r in results:
            fit = r.fit or {}
            summary[r.fold] = torch.tensor([
                0.0 if r.error is None else 1.0,
                *(math.nan if fit.get(k) is None else float(fit[k]) for k in ("pixel_loss_start", "pixel_loss_end", "identity_loss_start", "identity_loss_end")),
            ], dtype=torch.float64)
        if world > 1:
            mine = _merge_ranks(trainer, mine)
            summary = _merge_ranks(trainer, summary)
        readings, similarity = two_stage.unpack(mine)
        local_errors = {r.fold: r.error for r in results if r.error}
        errors, fits = [], {}
        for fold in range(two_stage.config.n_folds):
            row = summary[fold].tolist()
            if row[0] == 1.0:
                errors.append(local_errors.get(fold, f"the decoder of fold {fold} failed on another process (diverged)"))
            keys = ("pixel_loss_start", "pixel_loss_end", "identity_loss_start", "identity_loss_end")
            fits[fold] = {k: (None if math.isnan(v) else v) for k, v in zip(keys, row[1:])}
        for message in errors:
            report.warnings.append(f"two-stage: {message}; its faces are left out of R_k and training goes on")
        report.recovery = two_stage.measures(embeddings, readings, similarity, fits, errors)
        first = next((r for r in results if r.fold == 0 and r.decoded is not None), None)
        return (first.originals, first.decoded, first.similarity[: first.decoded.shape[0]]) if first is not None else None

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
        """Global-zero only: write the history, log the scalars, tell the sinks."""
        self.history.write()
        metrics = dict(scalar_metrics(report), **{"frx/epoch": float(epoch)})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        get_plugin_manager().hook.frx_analysis_completed(
            report=report,
            context={"epoch": epoch, "global_step": trainer.global_step, "out_dir": str(self.out_dir), "framework": "lightning"},
        )
