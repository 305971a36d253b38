"""``frx demo``: train a small face-recognition backbone on the synthetic world with frx attached."""

from __future__ import annotations

import math
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader

from frx_lightning.callback import AttributeRecoveryCallback
from frx_plugin.commands.common import Interrupted, check_output_folder
from frx_plugin.commands.messages import is_quiet, note_progress, progress_every_s, quiet_library_logs
from frx_plugin.commands.outputs import discard_staging, replace_results, staging_folder
from frx_plugin.figures import plot_leakage_history
from frx_plugin.history import HISTORY_JSON, HISTORY_TENSORS
from frx_plugin.hookspecs import hookimpl
from frx_plugin.models import BACKBONE_FILE, ArcFaceHead, ResidualFaceNet, save_backbone
from frx_plugin.plugins import get_plugin_manager
from frx_plugin.report import Report
from frx_plugin.synthetic import SyntheticFaceDataset, SyntheticFaceWorld, SyntheticProbeSet
from frx_plugin.two_stage import TwoStageConfig

DEMO_DEFAULTS: dict[str, Any] = {
    "epochs": 12,
    "identities": 500,
    "images_per_identity": 20,
    "probe_identities": 400,
    "probe_images_per_identity": 4,
    "size": 64,
    "batch_size": 64,
    "lr": 0.1,
    "embedding_dim": 128,
    "seed": 0,
    "out": "frx-demo",
    "devices": 1,
    "every_n_epochs": 1,
    "n_bootstrap": 200,
    "two_stage": False,
    "decode_every_n_epochs": 6,
    "decoder_steps": 200,
    "overwrite": False,
}

#: The identity-disjoint folds of the demo's analysis passes (the callback's default).
DEMO_FOLDS = 5

#: What ``frx demo`` writes into its folder (an earlier run's are refused unless --overwrite); Lightning's CSV logs
#: go to ``logs/version_N``, a new version per run.
DEMO_RESULTS = (HISTORY_JSON, HISTORY_TENSORS, BACKBONE_FILE, "leakage.png", "decoded.png", "recovery.png", "report.html")


class FaceRecognitionModule(LightningModule):
    """A backbone trained with an ArcFace head; ``forward`` returns embeddings, so frx can call the module."""

    def __init__(self, num_classes: int, embedding_dim: int = 128, input_size: int = 64, lr: float = 0.1, total_steps: int = 1000) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.backbone = ResidualFaceNet(embedding_dim=embedding_dim, input_size=input_size)
        self.head = ArcFaceHead(embedding_dim, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        logits = self.head(self.backbone(images), labels)
        loss = F.cross_entropy(logits, labels)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True)
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams["lr"], momentum=0.9, weight_decay=5e-4)
        warmup = max(1, self.hparams["total_steps"] // 20)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, self.hparams["total_steps"] - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class _ProgressPrinter:
    """A sink of ``frx_analysis_completed`` that prints one line per pass (global-zero rank only)."""

    def __init__(self, stream=None) -> None:
        self.stream = sys.stdout if stream is None else stream  # the stdout of the time it is made (a test's capture too)
        self.started = time.perf_counter()

    @hookimpl
    def frx_analysis_completed(self, report: Report, context: dict[str, Any]) -> None:
        by_group: dict[str, list[float]] = {}
        for item in report.leakage:
            if not math.isnan(item.leakage):
                by_group.setdefault(item.group or "other", []).append(item.leakage)
        groups = "  ".join(f"mean ℓ {g} {sum(v) / len(v):.3f}" for g, v in sorted(by_group.items()))
        tar = report.verification.tar if report.verification else math.nan
        fmr = report.verification.fmr if report.verification else math.nan
        print(
            f"[frx] epoch {context['epoch']:>2}  TAR@FMR={fmr:g} {tar:.3f}  {groups}  ({time.perf_counter() - self.started:.0f}s)",
            file=self.stream,
            flush=True,
        )


def _write_history_or_stop(callback: AttributeRecoveryCallback) -> None:
    """Write the history again when a pass's files could not be written: a failure (a full disk) is then the
    ``OSError`` naming the file, which ends the demo (one line) instead of training on without its files."""
    history = callback.history
    if any("write_error" in entry for entry in history.records + history.failures):
        history.write()


class _StopOnUnwrittenHistory(Callback):
    """After each of the frx callback's passes (one process): stop the demo when its history could not be written."""

    def __init__(self, callback: AttributeRecoveryCallback) -> None:
        self.callback = callback

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.world_size == 1:
            _write_history_or_stop(self.callback)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.world_size == 1:
            _write_history_or_stop(self.callback)


class _TrainingSteps(Callback):
    """Each training step is progress (Lightning's bar shows it): frx's heartbeat stays silent while training runs."""

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        note_progress("training")


class _PlainTrainingProgress(Callback):
    """Training progress in a log or CI (no terminal): a plain line at most every ``every_s`` seconds of an epoch
    (default: the environment's FRX_PROGRESS_EVERY_S, as for frx's other plain lines, else 30 s)."""

    def __init__(self, every_s: float | None = None) -> None:
        self.every_s = progress_every_s(30.0) if every_s is None else every_s
        self.last = time.monotonic()

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.started = self.last = time.monotonic()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.monotonic()
        if now - self.last >= self.every_s and trainer.is_global_zero:
            self.last = now
            total = trainer.num_training_batches
            print(f"[frx] epoch {trainer.current_epoch + 1}: batch {batch_idx + 1:,}/{total:,} ({now - self.started:.0f}s)",
                  file=sys.stderr, flush=True)


def format_table(first: dict[str, Any], last: dict[str, Any]) -> str:
    """The end-of-demo table: each attribute's metric and normalised leakage before and after training."""
    lines = [
        f"{'attribute':<14} {'group':<9} {'metric':<6} {'epoch ' + str(first['epoch']):>9} {'epoch ' + str(last['epoch']):>9}   "
        f"{'leakage ℓ (95% CI)':<22} {'S_k':>6} {'errors':>6}",
        "-" * 92,
    ]
    significance = last.get("significance") or {}
    errors = (last.get("error_attribution") or {}).get("all", {})

    def fmt(v):
        return "   nan" if v is None else f"{v:6.3f}"

    before = {a["name"]: a for a in first["attributes"]}
    for item in sorted(last["attributes"], key=lambda a: (a.get("group") or "", -(a["leakage"] or 0))):
        b = before.get(item["name"], {})
        ci = f"{fmt(item['leakage'])} [{fmt(item['leakage_low']).strip()}, {fmt(item['leakage_high']).strip()}]"
        sk = significance.get(item["name"], {}).get("value")
        share = errors.get(item["name"])
        lines.append(
            f"{item['name']:<14} {item.get('group') or '':<9} {item['metric']:<6} {fmt(b.get('value')):>9} {fmt(item['value']):>9}   {ci:<22} "
            f"{fmt(sk)} {fmt(share)}"
            + (f"  ({item['reason']})" if item.get("reason") else "")
        )
    for name, rec in (("before", first), ("after", last)):
        ver = rec.get("verification")
        if ver:
            lines.append(f"verification {name} training (held-out identities): TAR {ver['tar']:.3f} at FMR {ver['fmr']:g}")
    if significance:
        lines.append(
            f"S_k: identity significance after training ({last.get('counterfactuals')} counterfactuals: how far changing the "
            "attribute alone moves an embedding, relative to changing the person); errors: share of the explained recognition "
            "errors that changing the attribute alone would flip"
        )
    return "\n".join(lines)


def format_recovery_table(record: dict[str, Any]) -> str:
    """The two-stage table: R_k of both paths, the estimator's ceiling on real faces, and the spread across samples."""
    recovery = record["recovery"]

    def fmt(value) -> str:
        return "   nan" if value is None else f"{value:6.3f}"

    lines = [
        f"two-stage recovery at epoch {record['epoch']} (decoder {recovery['decoder']}, estimator {recovery['estimator']}, "
        f"{recovery['samples']} samples per z, {recovery['folds']} identity-disjoint folds)",
        f"{'attribute':<14} {'group':<9} {'R two-stage (95% CI)':<24} {'R direct':>8} {'E on real':>9} {'spread':>7}",
        "-" * 78,
    ]
    entries = recovery["attributes"]
    for name in sorted(entries, key=lambda n: (entries[n].get("group") or "", n)):
        entry = entries[name]
        two = entry.get("two_stage") or {}
        ci = f"{fmt(two.get('value'))} [{fmt(two.get('low')).strip()}, {fmt(two.get('high')).strip()}]" if two else "     -"
        mark = "" if entry.get("readable", True) else "  (the estimator cannot read it from real faces)"
        lines.append(
            f"{name:<14} {entry.get('group') or '':<9} {ci:<24} {fmt(entry['direct']['value']):>8} {fmt(entry.get('real_images')):>9} "
            f"{fmt(entry.get('spread')):>7}{mark}"
        )
    similarity = recovery["identity_similarity"]
    lines.append(
        f"cos(f(G(z)), z) of held-out faces {fmt(similarity['decoded']).strip()} (same person {fmt(similarity['genuine']).strip()}, "
        f"different people {fmt(similarity['impostor']).strip()}); Spearman of the two paths {fmt(recovery['spearman_two_stage_vs_direct']).strip()}"
    )
    return "\n".join(lines)


def check_demo_options(opts: dict[str, Any]) -> None:
    """A ``ValueError`` naming the first of ``frx demo``'s options out of its range (before anything is built)."""
    for key in ("epochs", "identities", "images_per_identity", "probe_identities", "probe_images_per_identity", "devices",
                "every_n_epochs", "decode_every_n_epochs", "decoder_steps", "embedding_dim", "batch_size"):
        if isinstance(opts[key], bool) or not isinstance(opts[key], int) or opts[key] < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be at least 1, got {opts[key]}")
    if opts["identities"] < 2:
        raise ValueError("--identities must be at least 2")
    if opts["probe_identities"] < DEMO_FOLDS:
        raise ValueError(f"--probe-identities must be at least {DEMO_FOLDS} (each of the {DEMO_FOLDS} identity-disjoint folds of "
                         f"the leakage heads needs its own), got {opts['probe_identities']}")
    if opts["probe_images_per_identity"] < 2:
        raise ValueError(f"--probe-images-per-identity must be at least 2 (verification needs pairs of the same person), "
                         f"got {opts['probe_images_per_identity']}")
    if isinstance(opts["n_bootstrap"], bool) or not isinstance(opts["n_bootstrap"], int) or opts["n_bootstrap"] < 0:
        raise ValueError(f"--n-bootstrap must be at least 0 (0: no intervals), got {opts['n_bootstrap']}")
    if not isinstance(opts["size"], int) or opts["size"] < 32 or opts["size"] % 32:
        raise ValueError(f"--size must be a positive multiple of 32 (the backbone halves it five times), got {opts['size']}")
    if opts["two_stage"] and opts["decode_every_n_epochs"] % opts["every_n_epochs"]:
        raise ValueError(f"--decode-every-n-epochs ({opts['decode_every_n_epochs']}) must be a multiple of --every-n-epochs "
                         f"({opts['every_n_epochs']}): a two-stage pass runs inside an analysis pass")
    n_train = opts["identities"] * opts["images_per_identity"]
    if n_train // opts["devices"] < opts["batch_size"]:
        raise ValueError(
            f"{opts['identities']} identities × {opts['images_per_identity']} images = {n_train} training images "
            f"give fewer than one batch of {opts['batch_size']} per device on {opts['devices']} device(s); raise --identities"
        )


def run_demo(options: dict[str, Any]) -> int:
    """``frx demo`` with ``options`` (its command-line options by name; ``None`` takes :data:`DEMO_DEFAULTS`): exit code.

    Every option and the output folder are checked first; a folder that holds an earlier run's
    results (:data:`DEMO_RESULTS`) is refused unless ``overwrite``: then the new run is written beside
    the earlier one (``OUT/.frx-new``) and replaces it only once complete, so an interrupted or failed
    run leaves the earlier one whole. SIGTERM during training is an
    :class:`~frx_plugin.commands.common.Interrupted`, never Lightning's exit with code 0.
    """
    opts = dict(DEMO_DEFAULTS, **{k: v for k, v in options.items() if v is not None})
    check_demo_options(opts)
    out = check_output_folder(opts["out"], "--out", DEMO_RESULTS, overwrite=bool(opts["overwrite"]))
    stage = staging_folder(out, DEMO_RESULTS)
    if stage != out:  # --overwrite: asked to replace an earlier run
        print(f"frx demo: --overwrite: the new run is written into {stage} and replaces the earlier run's files in {out} once complete",
              file=sys.stderr, flush=True)
    try:
        with quiet_library_logs():  # Lightning's INFO lines (set at its import): shown with --verbose
            trained = _train(opts, stage, out)
        if trained is None:  # a rank other than the global-zero one: that rank writes
            return 0
        written = _write_results(opts, stage, *trained)
    except BaseException:
        discard_staging(stage, out)  # the earlier run stays whole
        raise
    replace_results(stage, out, DEMO_RESULTS)
    written = [out / Path(path).name for path in written]
    try:  # the page is a convenience: a failure to draw it never fails the demo
        from frx_plugin.commands.common import command_line
        from frx_plugin.commands.report import write_report

        command = command_line() if sys.argv[1:2] == ["demo"] else None
        written.append(write_report(out, command=command))
    except Exception as exc:  # noqa: BLE001
        print(f"frx demo: report.html not written: {type(exc).__name__}: {exc}", file=sys.stderr)
    print(f"\ntrained {opts['epochs']} epochs in {trained[-1]:.0f}s; wrote {', '.join(str(p) for p in written)}")
    return 0


def _train(opts: dict[str, Any], stage: Path, out: Path):
    """Train with the callback writing into ``stage`` (Lightning's CSV logs under ``out/logs``): (model, callback, seconds),
    or None on a rank other than the global-zero one."""
    seed_everything(opts["seed"], workers=True, verbose=False)
    train_world = SyntheticFaceWorld(opts["identities"], opts["images_per_identity"], seed=opts["seed"], size=opts["size"])
    probe = SyntheticProbeSet(**_probe_spec(opts))
    loader = DataLoader(SyntheticFaceDataset(train_world), batch_size=opts["batch_size"], shuffle=True, drop_last=True, num_workers=0)
    steps_per_epoch = max(1, len(train_world) // opts["batch_size"] // opts["devices"])
    model = FaceRecognitionModule(
        num_classes=opts["identities"],
        embedding_dim=opts["embedding_dim"],
        input_size=opts["size"],
        lr=opts["lr"],
        total_steps=steps_per_epoch * opts["epochs"],
    )
    two_stage = {}
    if opts["two_stage"]:
        from frx_plugin.synthetic.estimator import SYNTHETIC_ESTIMATOR_DEFAULTS, synthetic_estimator_path

        cached = synthetic_estimator_path(**dict(SYNTHETIC_ESTIMATOR_DEFAULTS, size=opts["size"]))
        if not cached.exists():
            print(f"[frx] training the synthetic attribute estimator once (about a minute at 64x64); it is cached at {cached}", flush=True)
        two_stage = {
            "decode_every_n_epochs": opts["decode_every_n_epochs"],
            "two_stage": TwoStageConfig(steps=opts["decoder_steps"], seed=opts["seed"], n_bootstrap=opts["n_bootstrap"]),
        }
    callback = AttributeRecoveryCallback(  # the demo's model trains on the probe set's own range: RGB in [0, 1]
        probe, out_dir=stage, every_n_epochs=opts["every_n_epochs"], n_bootstrap=opts["n_bootstrap"], seed=opts["seed"],
        transform="unit", **two_stage
    )
    bar = sys.stderr.isatty() and not is_quiet()  # Lightning's own bar on a terminal; plain lines in a log
    extra = [_TrainingSteps()] + ([] if bar or is_quiet() else [_PlainTrainingProgress()])
    printer = _ProgressPrinter()
    pm = get_plugin_manager()
    pm.register(printer, name="frx.demo.progress")
    try:
        trainer = Trainer(
            max_epochs=opts["epochs"],
            accelerator="cpu",
            devices=opts["devices"],
            strategy="ddp" if opts["devices"] > 1 else "auto",
            callbacks=[callback, _StopOnUnwrittenHistory(callback), *extra],
            logger=CSVLogger(str(out), name="logs"),
            enable_checkpointing=False,
            enable_progress_bar=bar,
            enable_model_summary=False,
            log_every_n_steps=10,
            deterministic=False,
        )
        started = time.perf_counter()
        try:
            trainer.fit(model, loader)
        except SIGTERMException:  # Lightning's way out after SIGTERM is a SystemExit with code 0: say it was stopped
            raise Interrupted(signal.SIGTERM) from None
        elapsed = time.perf_counter() - started
    finally:
        pm.unregister(printer)
    return (model, callback, elapsed) if trainer.is_global_zero else None


def _probe_spec(opts: dict[str, Any]) -> dict[str, Any]:
    return {"n_identities": opts["probe_identities"], "images_per_identity": opts["probe_images_per_identity"],
            "seed": opts["seed"], "size": opts["size"], "first_identity": 1_000_000}


def _write_results(opts: dict[str, Any], stage: Path, model: FaceRecognitionModule, callback: AttributeRecoveryCallback,
                   elapsed: float) -> list[Path]:
    """The backbone and the figures into ``stage``, the tables printed: the files of the run (every one of them)."""
    _write_history_or_stop(callback)
    records = callback.history.records
    if not records:
        raise RuntimeError("no analysis pass succeeded; see the warnings above")
    save_backbone(model.backbone, stage / BACKBONE_FILE, probe=_probe_spec(opts))
    figure = plot_leakage_history(records, stage / "leakage.png", title="frx demo: attribute leakage while training on the synthetic world")
    print()
    print(format_table(records[0], records[-1]))
    written = [stage / HISTORY_JSON, stage / HISTORY_TENSORS, stage / BACKBONE_FILE, figure]
    decoded = [r for r in records if r.get("recovery")]
    if decoded:
        print()
        print(format_recovery_table(decoded[-1]))
        written += [stage / name for name in ("decoded.png", "recovery.png") if (stage / name).exists()]
    elif opts["two_stage"]:
        print("\nfrx demo: no two-stage pass succeeded; see the warnings above", file=sys.stderr)
    return written
