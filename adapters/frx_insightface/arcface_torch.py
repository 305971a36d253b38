"""frx inside InsightFace's arcface_torch training loop.

arcface_torch's ``train_v2.py`` calls its callbacks as ``callback(global_step, backbone)`` on every
rank, with the backbone wrapped in ``DistributedDataParallel``. :class:`ArcFaceTorchCallback` has
that signature: every ``every_n_steps`` steps it runs the frx pass (:func:`frx_plugin.passes.run_pass`,
the same pass as the Lightning callback's) on every rank, the global-zero rank writes the history,
logs one line to arcface_torch's log (Python ``logging``), and, given a ``SummaryWriter``, sends the
scalars to it under the Lightning adapter's names (``frx/leakage/<attribute>``, …)::

    frx_callback = ArcFaceTorchCallback(probe, out_dir=os.path.join(cfg.output, "frx"), every_n_steps=2000,
                                        writer=summary_writer)          # before the resume block
    start_epoch = 0
    global_step = 0
    if cfg.resume:
        dict_checkpoint = torch.load(...)
        ...
        frx_callback.load_state_dict(dict_checkpoint["state_frx"])    # before train_v2.py's `del dict_checkpoint`
        del dict_checkpoint
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

from frx_plugin.config import AnalysisConfig, check_positive
from frx_plugin.history import HistoryRecorder
from frx_plugin.loop import AnalysisLoop
from frx_plugin.probe import ProbeSet
from frx_plugin.report import Report
from frx_plugin.sinks import LogSink, WandbSink, WriterSink, summary_line
from frx_plugin.two_stage import TwoStageConfig

log = logging.getLogger("frx")

__all__ = ["ArcFaceTorchCallback", "summary_line"]


class ArcFaceTorchCallback:
    """An frx pass every ``every_n_steps`` steps of an arcface_torch loop (see the module): a thin adapter
    over :class:`frx_plugin.loop.AnalysisLoop`, whose sinks are the writer, the wandb run and the log.

    Args:
        probe: the probe set (images with identities and attributes) each pass embeds.
        out_dir: where ``history.json`` and ``history.safetensors`` go; a history already there is continued.
        every_n_steps: a pass when ``global_step % every_n_steps == 0``.
        writer: any object with ``add_scalar(tag, value, step)`` (``SummaryWriter``, tensorboardX's), or ``None``;
            after a resume the passes it showed after the checkpoint are purged (TensorBoard's purge marker).
        config: what a pass measures (:class:`frx_plugin.config.AnalysisConfig`); any of its fields may also be
            given as a keyword (``n_bootstrap=50``, ``counterfactuals="off"``, …), which overrides the config's.
        on_error: "warn" (a failed pass is logged and skipped; a history that cannot be written is logged
            and written at the next pass) or "raise" (either raises, a history write after the writer has the pass).
        decode_every_n_steps: the paper's two stages every that many steps (a multiple of
            ``every_n_steps``), or ``None`` (off: they train decoders).
        two_stage: the two stages' options (:class:`frx_plugin.two_stage.TwoStageConfig`).
        embed: which output of the backbone is the embedding (a callable ``(module, images) -> z``, an
            attribute path, or an output index or key); default the backbone's output, as arcface_torch's are.
        transform: the backbone's input from the probe's RGB in [0, 1]; default ``"arcface"``, arcface_torch's
            own ``(x - 0.5) / 0.5`` (its dataset's ``Normalize(mean=0.5, std=0.5)``); a callable, a preset
            (``"unit"``, ``"imagenet"``) or ``{"mean", "std", "scale", "channels"}`` otherwise.
        wandb_run: a Weights & Biases run (anything with ``log(metrics, step=...)``), or ``None``.
    """

    def __init__(self, probe: ProbeSet, out_dir: str | Path = "frx-history", every_n_steps: int = 2000, writer: Any = None,
                 config: AnalysisConfig = AnalysisConfig(), on_error: str = "warn", decode_every_n_steps: int | None = None,
                 two_stage: TwoStageConfig | None = None, embed: Any = None, transform: Any = "arcface",
                 wandb_run: Any = None, **config_fields: Any) -> None:
        if not isinstance(config, AnalysisConfig):
            raise TypeError(f"config must be a frx_plugin.config.AnalysisConfig, got {type(config).__name__}")
        check_positive("every_n_steps", every_n_steps)
        sinks: list[WriterSink | WandbSink] = [WriterSink(writer)] if writer is not None else []
        sinks += [WandbSink(wandb_run)] if wandb_run is not None else []
        self.loop = AnalysisLoop(
            probe, out_dir, config.updated(**config_fields), embed=embed, transform=transform, every_n_steps=every_n_steps,
            decode_every_n_steps=decode_every_n_steps, run_before_training=False, two_stage=two_stage,
            sinks=sinks + [LogSink(log)], on_error=on_error, warn=lambda message: log.warning("%s", message),
            framework="arcface_torch",
        )
        self.probe, self.config, self.writer, self.wandb_run = probe, self.loop.config, writer, wandb_run

    def __call__(self, global_step: int, backbone: Any, epoch: int | None = None) -> None:
        self.loop.step(backbone, global_step, epoch=epoch)

    def run(self, global_step: int, backbone: Any, epoch: int | None = None) -> Report | None:
        """One pass now (every rank must call it: it runs collectives). Returns its report, or ``None`` if it failed."""
        return self.loop.run(backbone, global_step, epoch=epoch)

    def close(self) -> None:
        """Release what frx holds of the run (the gloo group it made where the default group is CUDA-only).

        Call it before ``destroy_process_group()``; frx also does it at exit if you do not.
        """
        self.loop.close()

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
    def out_dir(self) -> Path:
        return self.loop.out_dir

    @property
    def failures(self) -> list[dict[str, Any]]:
        """The passes that failed (``epoch``, ``global_step``, ``error``), as kept in the history."""
        return self.history.failures

    @property
    def two_stage(self) -> Any:
        """The two-stage path's state (estimator, decoders), made at the first pass."""
        return self.loop.two_stage

    @property
    def last_report(self) -> Report | None:
        return self.loop.last_report

    @property
    def plan(self) -> Any:
        return self.loop.plan
