"""The loop object: what any training loop needs of frx across its passes, once, in the core.

:class:`AnalysisLoop` keeps the schedule (every N epochs, every N steps, the two stages every M),
the history (continued, never overwritten; resumed from a checkpoint's :meth:`~AnalysisLoop.state_dict`),
the two stages' warm start and the model contract, and after each pass it publishes the numbers to the
sinks (loggers, writers), writes the history, applies the error policy and fires
``frx_analysis_completed`` after the write. The pass itself is :func:`frx_plugin.passes.run_pass`.

The Lightning callback and the arcface_torch callback are thin adapters over it; a plain PyTorch or
Accelerate loop uses it directly::

    from frx_plugin.loop import AnalysisLoop

    frx_loop = AnalysisLoop(probe, out_dir="runs/frx", transform="arcface", every_n_steps=1000, sinks=[writer])
    for step, (images, labels) in enumerate(loader, 1):
        ...                                   # the training step
        frx_loop.step(model, step, epoch=epoch)   # every process; a pass when the schedule says so

Every process of a distributed run calls it alike (a pass runs collectives through
``torch.distributed``); the global-zero process writes the files and feeds the sinks.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frx_plugin.collectives import Collectives, default_collectives
from frx_plugin.config import ON_ERROR, AnalysisConfig, PassPlan, check_positive
from frx_plugin.history import HistoryRecorder
from frx_plugin.model import ModelAdapter, ModelOptions, model_device, unwrap
from frx_plugin.passes import PassResult, announce_pass, plan_pass, prepare_two_stage, run_pass
from frx_plugin.probe import ProbeSet
from frx_plugin.report import Report
from frx_plugin.sinks import HISTORY_WRITE_FAILED, PASS_FAILED, as_sinks, scalar_metrics

__all__ = ["AnalysisLoop", "HISTORY_WRITE_FAILED", "Schedule"]


@dataclass(frozen=True)
class Schedule:
    """When a loop runs a pass: ``every_n_epochs`` (after every that many epochs; the pass after training
    epoch ``e``, 0-based, is epoch ``e + 1``), ``every_n_steps`` (when ``step % n == 0``, step 0 included), and before
    training (epoch 0) with ``run_before_training``. The two stages run in the passes at every
    ``decode_every_n_epochs``-th epoch or ``decode_every_n_steps``-th step (multiples of the pass's own)."""

    every_n_epochs: int | None = None
    every_n_steps: int | None = None
    decode_every_n_epochs: int | None = None
    decode_every_n_steps: int | None = None
    run_before_training: bool = True

    def __post_init__(self) -> None:
        for name in ("every_n_epochs", "every_n_steps", "decode_every_n_epochs", "decode_every_n_steps"):
            check_positive(name, getattr(self, name), allow_none=True)
        for decode, every in (("decode_every_n_epochs", "every_n_epochs"), ("decode_every_n_steps", "every_n_steps")):
            d, e = getattr(self, decode), getattr(self, every)
            if d is not None and (e is None or d % e):
                raise ValueError(f"{decode} ({d}) must be a multiple of {every} ({e}): a two-stage pass runs inside an analysis pass")

    @property
    def decodes(self) -> bool:
        return self.decode_every_n_epochs is not None or self.decode_every_n_steps is not None

    def step_due(self, step: int) -> bool:
        return self.every_n_steps is not None and step % self.every_n_steps == 0

    def epoch_due(self, epoch: int) -> bool:
        return self.every_n_epochs is not None and epoch > 0 and epoch % self.every_n_epochs == 0

    def decode_due(self, step: int, epoch: int | None, epoch_pass: bool) -> bool:
        """Whether the pass decodes: an epoch's pass (epoch 0 before training, the epoch ends) by the epochs, a step's by the steps."""
        if epoch_pass:
            return self.decode_every_n_epochs is not None and epoch is not None and epoch % self.decode_every_n_epochs == 0
        return self.decode_every_n_steps is not None and step % self.decode_every_n_steps == 0


def _warn(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=3)


class AnalysisLoop:
    """frx's passes inside a training loop (see the module).

    Args:
        probe: the probe set (images with identities and attributes) every pass embeds.
        out_dir: where ``history.json`` and ``history.safetensors`` go; a history already there is continued (one of
            a probe set with other attributes is refused now); ``None``: set :attr:`out_dir` before the first pass.
        config: what a pass measures (:class:`frx_plugin.config.AnalysisConfig`: folds, bootstrap, FMR,
            heads, differentials, counterfactuals and their budget).
        embed: which output of the model is the embedding (a callable ``(module, images) -> z``, an
            attribute path, an output index or key); default the model's output, with a warning where frx guesses.
        transform: the model's input from the probe's RGB in [0, 1] (``"arcface"``, ``"imagenet"``,
            ``"unit"``, a mapping or a callable); default [0, 1] with a warning once, naming this option.
        every_n_epochs, every_n_steps, decode_every_n_epochs, decode_every_n_steps, run_before_training:
            the :class:`Schedule`.
        two_stage: the two stages' options (:class:`frx_plugin.two_stage.TwoStageConfig`).
        sinks: where the numbers go: ``SummaryWriter``s, wandb runs, :mod:`frx_plugin.sinks` objects.
        on_error: "warn" (a failed pass, or a history that cannot be written, is reported and training goes
            on) or "raise".
        warn: how a warning reaches the user (default ``warnings.warn``), called on the global-zero process only.
        framework: the name ``frx_analysis_completed`` gets in its context.
        collectives: how the processes talk (default ``torch.distributed`` when it runs with more than one
            process, else one process), or given per pass.
    """

    def __init__(self, probe: ProbeSet, out_dir: str | Path | None = "frx-history", config: AnalysisConfig = AnalysisConfig(), *,
                 embed: Any = None, transform: Any = None, every_n_epochs: int | None = None,
                 every_n_steps: int | None = None, decode_every_n_epochs: int | None = None,
                 decode_every_n_steps: int | None = None, run_before_training: bool = True, two_stage: Any = None,
                 sinks: Any = None, on_error: str = "warn", warn: Callable[[str], Any] | None = None,
                 framework: str = "loop", collectives: Collectives | None = None) -> None:
        from frx_plugin.two_stage import TwoStageConfig

        if not isinstance(probe, ProbeSet):
            raise TypeError(f"probe must be a frx_plugin.probe.ProbeSet, got {type(probe).__name__}")
        if not isinstance(config, AnalysisConfig):
            raise TypeError(f"config must be a frx_plugin.config.AnalysisConfig, got {type(config).__name__}")
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        if two_stage is not None and not isinstance(two_stage, TwoStageConfig):
            raise TypeError(f"two_stage must be a frx_plugin.two_stage.TwoStageConfig, got {type(two_stage).__name__}")
        self.schedule = Schedule(every_n_epochs, every_n_steps, decode_every_n_epochs, decode_every_n_steps, run_before_training)
        self.model_options = ModelOptions(embed=embed, transform=transform)  # a bad option is an error now
        self.probe, self.config, self.on_error, self.framework = probe, config, on_error, framework
        self.two_stage_config = two_stage or TwoStageConfig(seed=config.seed, n_bootstrap=config.n_bootstrap)
        if config.counterfactuals == "exact":  # an error now, not at the first pass, where none can render the probe
            from frx_plugin.plugins import require_generator

            require_generator(probe)
        if self.schedule.decodes:
            from frx_plugin.plugins import require_decoder

            require_decoder(self.two_stage_config.decoder)  # an unknown name is an error now, not at the first pass
        self.sinks = as_sinks(sinks)
        self.history = HistoryRecorder(Path("frx") if out_dir is None else Path(out_dir), probe.schema)
        if out_dir is not None:
            self.history.check_folder()  # another probe set's history there is refused now, not at the first pass
        self.collectives = collectives
        self._warn = warn or _warn
        #: the plan (counterfactual path decided), made at the first pass or in :meth:`begin`
        self.plan: PassPlan | None = None
        #: the two-stage path (estimator, decoders), made in :meth:`begin` when the schedule decodes
        self.two_stage: Any = None
        self._two_stage_state: dict[str, Any] = {}
        self._adapter: ModelAdapter | None = None
        self._unwritten = 0  # passes written late: the next write that succeeds says so
        self._last_step: int | None = None  # the step of the last pass (no two passes at one step)
        self._seen_step: int | None = None  # the last step the loop was told of (kept in checkpoints)
        self.last_report: Report | None = None
        self.last_result: PassResult | None = None

    # -- where things go ---------------------------------------------------------------------------------
    @property
    def out_dir(self) -> Path:
        return self.history.out_dir

    @out_dir.setter
    def out_dir(self, value: str | Path) -> None:
        self.history.out_dir = Path(value)

    @property
    def failures(self) -> list[dict[str, Any]]:
        """The passes that failed (``epoch``, ``global_step``, ``error``), as kept in the history."""
        return self.history.failures

    @property
    def rank(self) -> int:
        return 0 if self.collectives is None else self.collectives.rank

    def warn(self, message: str) -> None:
        """A warning to the user, from the global-zero process only."""
        if self.rank == 0:
            self._warn(message)

    def model(self, module: Any) -> ModelAdapter:
        """``module`` with its contract: one adapter per module, so a guess warns once per run."""
        module = unwrap(module)
        if self._adapter is None or self._adapter.module is not module:
            self._adapter = ModelAdapter(module, warn=self.warn, **self.model_options.as_kwargs())
        return self._adapter

    # -- once per run --------------------------------------------------------------------------------------
    def begin(self, collectives: Collectives | None = None, module: Any = None) -> None:
        """Before the first pass (every process; idempotent): the collectives, the plan and its notices, the two stages."""
        if collectives is not None:
            self.collectives = collectives
        elif self.collectives is None:
            self.collectives = default_collectives(model_device(module) if module is not None else "cpu")
        if self.plan is None:
            self.plan = plan_pass(self.probe, self.config, on_error=self.on_error, decoder=self.schedule.decodes)
            for notice in self.plan.notices:
                self.warn(f"frx: {notice}")
        if self.schedule.decodes and self.two_stage is None:
            self.two_stage = prepare_two_stage(self.probe, self.two_stage_config, self.collectives)
            if self._two_stage_state:
                self.two_stage.load_state_dict(self._two_stage_state)
            for message in self.two_stage.warnings:
                self.warn(f"frx: {message}")

    def open_history(self) -> None:
        """Take up the history already in the folder (once; after a checkpoint was loaded), with its notices."""
        for notice in self.history.continue_existing():
            self.warn(f"frx: {notice}")

    # -- the schedule ------------------------------------------------------------------------------------
    def train_start(self, module: Any, step: int = 0, epoch: int = 0, collectives: Collectives | None = None) -> Report | None:
        """Before training: the epoch-0 pass (``run_before_training``), unless this run already has it."""
        self.begin(collectives, module)
        self.open_history()
        if self.schedule.run_before_training and epoch == 0 and not self.history.has_epoch(0):
            return self.run(module, step=step, epoch=0, epoch_pass=True)
        return None

    def step(self, module: Any, step: int, epoch: int | None = None, collectives: Collectives | None = None,
             epoch_ends: bool = False) -> Report | None:
        """After training step ``step``: a pass when ``step % every_n_steps == 0`` (once per step), unless
        ``epoch_ends`` and the epoch-end pass comes at this very step."""
        self._seen_step = step
        if not self.schedule.step_due(step) or step == self._last_step:
            return None
        if epoch_ends and epoch is not None and self.schedule.epoch_due(epoch + 1):
            return None
        return self.run(module, step=step, epoch=epoch, collectives=collectives)

    def epoch_end(self, module: Any, epoch: int, step: int, collectives: Collectives | None = None) -> Report | None:
        """After ``epoch`` epochs of training (1 after the first): a pass when ``epoch % every_n_epochs == 0``."""
        self._seen_step = step
        if not self.schedule.epoch_due(epoch):
            return None
        return self.run(module, step=step, epoch=epoch, collectives=collectives, epoch_pass=True)

    # -- one pass ----------------------------------------------------------------------------------------
    def run(self, module: Any, step: int, epoch: int | None = None, collectives: Collectives | None = None,
            epoch_pass: bool = False, forward_context: Any = None) -> Report | None:
        """One pass now (every process must call it: it runs collectives). Returns its report (``None`` if it failed)."""
        self.begin(collectives, module)
        self.open_history()
        collectives = self.collectives
        assert collectives is not None and self.plan is not None
        self._last_step = self._seen_step = step
        model = self.model(module)
        if forward_context is not None:
            model.forward_context = forward_context  # a loop's autocast: embed as the model trains
        decode = self.two_stage is not None and self.schedule.decode_due(step, epoch, epoch_pass)
        where = f"epoch {epoch}" if epoch is not None and (epoch_pass or step == 0) else f"step {step}"
        context = {"epoch": epoch, "global_step": step, "out_dir": str(self.out_dir), "framework": self.framework}
        result = run_pass(model, self.probe, self.plan, collectives, two_stage=self.two_stage if decode else None,
                          context=context, announce=False)
        self.last_result = result
        report = result.report
        if report is None:
            self.history.add_failure({"epoch": epoch, "global_step": step, "error": result.failure})
            self.warn(f"frx: the analysis pass at {where} failed and is skipped; training goes on. {result.failure}")
            metrics = {PASS_FAILED: 1.0}
        else:
            report.epoch, report.global_step = epoch, step
            self.last_report = report
            self.history.add(report.to_record(), report.tensors)
            for message in report.warnings:
                self.warn(f"frx ({where}): {message}")
            metrics = scalar_metrics(report)
        if epoch is not None:
            metrics["frx/epoch"] = float(epoch)
        self._publish(metrics, step, every_rank=True)
        unwritten = None
        if collectives.rank == 0:  # the sinks first: a file error never costs them the pass
            self._publish(metrics, step, every_rank=False)
            if report is not None:
                for sink in self.sinks:
                    if callable(getattr(sink, "log_report", None)):
                        sink.log_report(report, where)
                if result.decoded is not None:
                    self._publish_decoded(report, result.decoded, step, where)
                if result.strips:
                    self._publish_strips(report, result.strips, step, where)
            unwritten = self._write()
            if unwritten is not None:
                self._publish({HISTORY_WRITE_FAILED: 1.0}, step, every_rank=False)
            if report is not None:  # after the write, as the hook promises
                announce_pass(report, context, self.on_error)
        # on_error="raise": every process stops alike (the global-zero one writes, the others wait for it)
        if self.on_error == "raise" and collectives.any(unwritten is not None):
            raise self.history_error(unwritten)
        collectives.barrier()
        return report

    def _publish(self, metrics: dict[str, float], step: int, every_rank: bool) -> None:
        for sink in self.sinks:
            if bool(getattr(sink, "every_rank", False)) == every_rank and callable(getattr(sink, "log_scalars", None)):
                sink.log_scalars(metrics, step)

    def _publish_decoded(self, report: Report, decoded: tuple, step: int, where: str) -> None:
        """Global-zero only: ``decoded.png``, ``recovery.png`` and the decoded faces for the image sinks."""
        from frx_plugin.figures import decoded_grid, plot_decoded, plot_recovery

        originals, faces, similarity = decoded
        try:  # the image sinks first: a folder that cannot be written never costs them the faces
            grid = decoded_grid(originals, faces)
            for sink in self.sinks:
                if callable(getattr(sink, "log_image", None)):
                    sink.log_image("frx/decoded", grid, step)
            plot_decoded(originals, faces, self.out_dir / "decoded.png", similarity=similarity,
                         title=f"{where}: held-out faces and samples of G(z) (decoder trained on other identities)")
            if report.recovery is not None:
                plot_recovery(report.recovery, self.out_dir / "recovery.png", title=where)
        except Exception as exc:  # noqa: BLE001 - a figure never costs the pass
            report.warnings.append(f"two-stage figures not written: {type(exc).__name__}: {exc}")
            self.warn(f"frx: the two-stage figures were not written to {self.out_dir}: {type(exc).__name__}: {exc}")

    def _publish_strips(self, report: Report, strips: list, step: int, where: str) -> None:
        """Global-zero only: the decoded counterfactuals of a few errors, ``counterfactuals.png`` and for the image sinks."""
        from frx_plugin.figures import counterfactual_strip, plot_counterfactuals

        title = (f"{where}: error pairs (faces A, B), their decodings, then G(B) with one attribute edited in the decoder's "
                 "latent space and re-embedded; framed green where that change alone flips the decision at τ")
        try:
            if any(callable(getattr(sink, "log_image", None)) for sink in self.sinks):
                image = counterfactual_strip(strips, title)
                for sink in self.sinks:
                    if callable(getattr(sink, "log_image", None)):
                        sink.log_image("frx/counterfactuals", image, step)
            plot_counterfactuals(strips, self.out_dir / "counterfactuals.png", title=title)
        except Exception as exc:  # noqa: BLE001 - a figure never costs the pass
            report.warnings.append(f"counterfactual figure not written: {type(exc).__name__}: {exc}")
            self.warn(f"frx: the counterfactual figure was not written to {self.out_dir}: {type(exc).__name__}: {exc}")

    def _write(self) -> OSError | None:
        """Write the history; returns the ``OSError`` of a write that failed (the pass is kept, written at the next)."""
        try:
            self.history.write()
        except OSError as exc:
            message = f"the history could not be written to {self.out_dir}: {type(exc).__name__}: {exc}"
            self.history.mark_write_error(message)
            self._unwritten += 1
            if self.on_error != "raise":  # the error raised says it all
                self.warn(f"frx: {message}; the pass is kept (in memory, in checkpoints and in the loggers, which get "
                          f"{HISTORY_WRITE_FAILED}) and the files are written again at the next pass")
            return exc
        if self._unwritten:
            self.warn(f"frx: the history is written again to {self.out_dir}: it holds every pass, the {self._unwritten} "
                      "written late with their write_error")
            self._unwritten = 0
        return None

    def history_error(self, exc: OSError | None) -> OSError:
        """What ``on_error="raise"`` raises for a history that could not be written (``None``: on another process)."""
        where = f"the history could not be written to {self.out_dir}"
        if exc is None:
            return OSError(f"{where} by the process that writes it (on_error='raise'; the loggers have the pass)")
        return OSError(f"{where}: {type(exc).__name__}: {exc} (on_error='raise'; the loggers have the pass)")

    # -- checkpoints -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The history, the last step seen and the two stages' warm start; plain containers and tensors only,
        so ``torch.load(..., weights_only=True)`` reads it."""
        state: dict[str, Any] = {"history": self.history.state_dict()}
        if self._seen_step is not None:
            state["global_step"] = int(self._seen_step)
        if self.two_stage is not None:
            state["two_stage"] = self.two_stage.state_dict()  # the decoders' warm start survives a resume
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint: its passes stand, the ones after it are re-run (and, where a sink
        allows it, purged from what it shows: TensorBoard's purge at the checkpoint's step)."""
        if not isinstance(state, dict) or "history" not in state:
            raise ValueError("the frx state in this checkpoint has no 'history' (was it written by frx's state_dict()?)")
        self.history.load_state_dict(state["history"])
        self._two_stage_state = dict(state.get("two_stage", {}))
        if self.two_stage is not None and self._two_stage_state:
            self.two_stage.load_state_dict(self._two_stage_state)
        step = state.get("global_step")
        if isinstance(step, int):
            self._seen_step = step
            for sink in self.sinks:
                purge = getattr(sink, "purge_after", None)
                if callable(purge) and self.rank == 0:
                    purge(step)

    def close(self) -> None:
        """Release what frx holds of the run (the gloo group it made where the default group is CUDA-only).

        Call it before ``destroy_process_group()``; frx also does it at exit if you do not.
        """
        close = getattr(self.collectives, "close", None)
        if callable(close):
            close()
        self.collectives = None
