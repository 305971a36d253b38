"""The GPU check: frx's training-loop pass on one CUDA device, against the CPU, with its memory.

    python benchmarks/gpu.py [--device cuda] [--probe-images 10000 --size 112 --epochs 3] [--out gpu/gpu.json]
    python benchmarks/gpu.py --device cpu --small [--out /tmp/gpu-cpu/gpu.json]    # the CPU fallback, about a minute

What it runs and measures (defaults; under 8 minutes on one H200):

1. **Training with the callback.** A real ``lightning.pytorch.Trainer`` (``accelerator="gpu"``,
   ``devices=1``; ``"cpu"`` with ``--device cpu``) trains three models on the synthetic world with
   ``AttributeRecoveryCallback`` attached (``on_error="raise"``, a pass before training and after
   every epoch): the demo's ``FaceRecognitionModule`` (``ResidualFaceNet``, 128-d, input 64×64 as
   ``frx demo`` builds it, the 112×112 probe faces resized by the backbone) in fp32 and once with
   ``precision="bf16-mixed"``, and an IResNet-50-sized backbone (``benchmarks/iresnet.py``: [3, 4,
   14, 3] blocks, 512-d, 112×112, ~43.6 M parameters, ~6.3 GMACs per face) with an ArcFace head.
2. **The pass split.** Every pass's timing as the callback records it: ``embed_s`` (rendering the
   probe faces and the forward pass), ``after_embed_s`` (leakage statistics, heads, bootstrap,
   verification over all pairs, history and loggers), ``counterfactual_s`` (the exact
   counterfactuals: re-rendered faces, embedded and scored), ``two_stage_s`` (off here), for a
   probe set of 10,000 faces (2,500 identities × 4) at 112×112.
3. **CUDA against CPU on the same weights.** One ``run_pass`` of each trained backbone on CUDA and
   one of a CPU copy, on a probe set of ``--compare-images`` faces (2,000: the CPU copy of
   IResNet-50 embeds at tens of faces per second), TF32 off during the CUDA pass; every measure
   of the two reports is compared (leakage with its interval, metric values, verification TAR
   and threshold, identity significance, error attribution) and the largest absolute
   difference is judged against ``--tolerance`` (1e-5). One flipped genuine pair moves TAR by
   1 / (genuine pairs), 3.3e-4 here, so the table names where the largest difference sits.
   ``--device cpu`` compares two CPU copies instead.
4. **GPU memory.** Five more passes of each trained backbone on the full probe set:
   ``max_memory_allocated`` of each (peak; the weights included and also shown apart) and
   ``memory_allocated`` after each (the result dropped): the last must not exceed the first.
   ``n/a (cpu)`` with ``--device cpu``.
5. **Two processes (DDP, NCCL)** where ``torch.cuda.device_count() >= 2``: the demo model trained
   by ``Trainer(devices=2, strategy="ddp")``, its epoch-0 pass compared with the single-process
   one; otherwise a line says why it was skipped (``--ddp cpu`` runs it with gloo on the CPU, a
   check of this script rather than of NCCL).

Run time on one H200 (estimate; no GPU run yet): about 3 minutes, 5 at the most, most of it on the
CPU — rendering the synthetic faces (~13,000 a pass, 22 full passes) and the CPU copy of IResNet-50
in the comparison (~5,400 faces); the analysis after the forward pass runs on the GPU with the model;
``--compare-images`` shrinks the last. On a CPU that other processes share, ``OMP_NUM_THREADS=1``
keeps torch's threads from spinning against them (it can be ten times faster there).

The Markdown tables go to stdout, every figure to ``--out`` (JSON); with ``--out`` the callback's
histories and the Trainer's CSV logs go beside it (``<out stem>-runs/``). A user mistake (CUDA
asked but not available, sizes that do not fit) exits 2 with one line; a run that breaks exits 1,
its last line naming the stage. ``--strict`` also exits 1 when a measured check fails (difference
over the tolerance, memory growth).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import logging
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
for _path in (_ROOT / "adapters", _ROOT):  # this checkout's frx first, whatever is installed
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import torch  # noqa: E402 - after the path set-up above

MIB = 2**20
#: what two runs of the same pass may differ in besides the measures
_NOT_MEASURES = frozenset({"timing", "epoch", "global_step", "pass_index", "run"})
_FULL = {
    "probe_images": 10_000, "size": 112, "iresnet_images": None, "iresnet_size": None, "compare_images": 2_000,
    "epochs": 3, "train_identities": 100, "train_images_per_identity": 10, "batch_size": 100,
    "significance_samples": 128, "max_error_pairs": 16, "n_bootstrap": 200,
}
_SMALL = {
    "probe_images": 200, "size": 32, "iresnet_images": None, "iresnet_size": None, "compare_images": 100,
    "epochs": 1, "train_identities": 16, "train_images_per_identity": 8, "batch_size": 32,
    "significance_samples": 8, "max_error_pairs": 2, "n_bootstrap": 50,
}


class UsageError(Exception):
    """A mistake of the command line or the machine (one line, exit 2)."""


# --------------------------------------------------------------------------- options


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="where the models train and embed (default cuda)")
    parser.add_argument("--small", action="store_true",
                        help="small sizes (200 faces at 32×32, one epoch, …): the CPU fallback in about a minute; explicit options win")
    parser.add_argument("--probe-images", type=int, help="faces of the demo backbone's probe set (default 10000; --small 200)")
    parser.add_argument("--size", type=int, help="probe and training faces' resolution (default 112; --small 32)")
    parser.add_argument("--iresnet-images", type=int, help="faces of the IResNet-50 probe set (default --probe-images)")
    parser.add_argument("--iresnet-size", type=int, help="resolution of the IResNet-50 and its faces (default --size)")
    parser.add_argument("--demo-input-size", type=int,
                        help="input size of the demo's backbone (default 64, as frx demo; --size when smaller); a multiple of 32")
    parser.add_argument("--compare-images", type=int, help="faces of the CUDA-vs-CPU pass (default 2000; --small 100)")
    parser.add_argument("--images-per-identity", type=int, default=4, help="probe faces per identity (default 4)")
    parser.add_argument("--epochs", type=int, help="training epochs of each run (default 3; --small 1)")
    parser.add_argument("--train-identities", type=int, help="identities of the training world (default 100)")
    parser.add_argument("--train-images-per-identity", type=int, help="training faces per identity (default 10)")
    parser.add_argument("--batch-size", type=int, help="training batch (default 100)")
    parser.add_argument("--counterfactuals", choices=("auto", "exact", "latent", "off"), default="auto",
                        help="the callback's counterfactual path (default auto: exact on the synthetic world)")
    parser.add_argument("--significance-samples", type=int, help="probe samples of identity significance (default 128)")
    parser.add_argument("--max-error-pairs", type=int, help="errors of each kind explained per pass (default 16)")
    parser.add_argument("--n-bootstrap", type=int, help="bootstrap replicates (default 200)")
    parser.add_argument("--memory-passes", type=int, default=5, help="passes of the memory check (default 5)")
    parser.add_argument("--tolerance", type=float, default=1e-5, help="largest difference allowed between the devices (default 1e-5)")
    parser.add_argument("--ddp", choices=("auto", "off", "cpu"), default="auto",
                        help="the 2-process run: auto (NCCL on 2 GPUs where there are), off, or cpu (gloo, 2 CPU processes)")
    parser.add_argument("--ddp-timeout", type=float, default=300.0, help="seconds the 2-process run may take (default 300)")
    parser.add_argument("--skip", action="append", default=[], choices=("iresnet", "bf16", "compare", "memory", "ddp"),
                        help="leave a part out (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write every figure to this JSON file (and the runs' files beside it)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a measured check fails (difference, memory growth)")
    parser.add_argument("--ddp-worker", type=Path, help=argparse.SUPPRESS)  # internal: one rank of the 2-process run
    args = parser.parse_args(argv)
    for key, value in (_SMALL if args.small else _FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.iresnet_images = args.iresnet_images or args.probe_images
    args.iresnet_size = args.iresnet_size or args.size
    if args.demo_input_size is None:
        args.demo_input_size = 64 if args.size >= 64 else 32
    return args


def check_args(args: argparse.Namespace) -> None:
    """A ``UsageError`` for options that cannot work, before anything is trained."""
    for key in ("probe_images", "size", "iresnet_images", "iresnet_size", "compare_images", "epochs", "train_identities",
                "train_images_per_identity", "batch_size", "significance_samples", "max_error_pairs", "memory_passes",
                "images_per_identity", "demo_input_size"):
        if getattr(args, key) < 1:
            raise UsageError(f"--{key.replace('_', '-')} must be at least 1, got {getattr(args, key)}")
    if args.n_bootstrap < 0:
        raise UsageError(f"--n-bootstrap must be at least 0, got {args.n_bootstrap}")
    per = args.images_per_identity
    if per < 2:
        raise UsageError("--images-per-identity must be at least 2 (verification needs genuine pairs)")
    for key in ("probe_images", "iresnet_images", "compare_images"):
        n = getattr(args, key)
        if n % per or n // per < 10:
            raise UsageError(f"--{key.replace('_', '-')} must be a multiple of --images-per-identity ({per}) with at least "
                             f"10 identities, got {n}")
    if args.iresnet_size % 16:
        raise UsageError(f"--iresnet-size must be a multiple of 16 (four stride-2 stages), got {args.iresnet_size}")
    if args.demo_input_size % 32:
        raise UsageError(f"--demo-input-size must be a multiple of 32 (the demo's backbone), got {args.demo_input_size}")
    if args.size < 16:
        raise UsageError(f"--size must be at least 16, got {args.size}")
    if args.train_identities < 2 or args.train_identities * args.train_images_per_identity < args.batch_size:
        raise UsageError(f"the training world ({args.train_identities} identities × {args.train_images_per_identity} faces) "
                         f"must hold at least 2 identities and one batch of {args.batch_size}")
    if not 0 < args.tolerance < 1:
        raise UsageError(f"--tolerance must be in (0, 1), got {args.tolerance}")
    if args.device == "cuda" and not torch.cuda.is_available():
        built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"
        raise UsageError(f"--device cuda: CUDA is not available (torch {torch.__version__} is {built}, "
                         f"{torch.cuda.device_count()} GPU(s) visible); run with --device cpu")
    if args.ddp == "cpu" and "ddp" not in args.skip and args.train_identities * args.train_images_per_identity < 2 * args.batch_size:
        raise UsageError("--ddp cpu: the training world must hold one batch per process (2 batches)")


# --------------------------------------------------------------------------- models and data


def _quiet_lightning() -> None:
    import lightning.pytorch  # noqa: F401 - its loggers exist once it is imported

    for name in [n for n in logging.root.manager.loggerDict if n.split(".")[0] in ("lightning", "pytorch_lightning")]:
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*`isinstance\\(treespec, LeafSpec\\)`.*")
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")


def _iresnet_module_class():
    from lightning.pytorch import LightningModule

    from benchmarks.iresnet import iresnet50
    from frx_lightning.demo import FaceRecognitionModule
    from frx_plugin.models import ArcFaceHead

    class IResNetModule(FaceRecognitionModule):
        """The demo's training (ArcFace head, SGD, warm-up and cosine) around an IResNet-50 fed as arcface_torch feeds it."""

        def __init__(self, num_classes: int, input_size: int = 112, lr: float = 0.02, total_steps: int = 1000) -> None:
            LightningModule.__init__(self)
            self.save_hyperparameters({"num_classes": num_classes, "input_size": input_size, "lr": lr, "total_steps": total_steps})
            self.backbone = iresnet50(input_size=input_size)
            self.head = ArcFaceHead(512, num_classes)

        def training_step(self, batch, batch_idx):
            images, labels = batch
            return super().training_step(((images - 0.5) / 0.5, labels), batch_idx)  # the "arcface" transform

    return IResNetModule


def _probe(kind: str, args: argparse.Namespace, images: int | None = None):
    """The synthetic probe set of ``kind`` ("demo" or "iresnet50"): ``images`` faces (default its option's) at its size."""
    from frx_plugin.synthetic import SyntheticProbeSet

    size = args.size if kind == "demo" else args.iresnet_size
    n = images or (args.probe_images if kind == "demo" else args.iresnet_images)
    per = args.images_per_identity
    return SyntheticProbeSet(n // per, per, seed=args.seed, size=size, first_identity=1_000_000)


def _build(kind: str, args: argparse.Namespace):
    """(module, probe set, training loader, transform, embedding size, description) of ``kind`` ("demo" or "iresnet50")."""
    from lightning.pytorch import seed_everything
    from torch.utils.data import DataLoader

    from frx_lightning.demo import FaceRecognitionModule
    from frx_plugin.synthetic import SyntheticFaceDataset, SyntheticFaceWorld

    size = args.size if kind == "demo" else args.iresnet_size
    probe = _probe(kind, args)
    world = SyntheticFaceWorld(args.train_identities, args.train_images_per_identity, seed=args.seed, size=size)
    loader = DataLoader(SyntheticFaceDataset(world), batch_size=args.batch_size, shuffle=True, drop_last=True)
    steps = max(1, len(world) // args.batch_size) * args.epochs
    seed_everything(args.seed, workers=True, verbose=False)  # the same initial weights in every run of a kind
    if kind == "demo":
        module = FaceRecognitionModule(num_classes=args.train_identities, embedding_dim=128, input_size=args.demo_input_size,
                                       total_steps=steps)
        return module, probe, loader, "unit", 128, f"ResidualFaceNet (demo), 128-d, input {args.demo_input_size}×{args.demo_input_size}"
    module = _iresnet_module_class()(num_classes=args.train_identities, input_size=size, total_steps=steps)
    return module, probe, loader, "arcface", 512, f"IResNet-50 ([3, 4, 14, 3]), 512-d, input {size}×{size}"


def _callback(probe, args: argparse.Namespace, out_dir: Path, transform: str):
    from frx_lightning.callback import AttributeRecoveryCallback

    return AttributeRecoveryCallback(
        probe, out_dir=out_dir, on_error="raise", counterfactuals=args.counterfactuals, n_bootstrap=args.n_bootstrap,
        significance_samples=args.significance_samples, max_error_pairs=args.max_error_pairs, seed=args.seed,
        transform=transform,
    )


def _plan(probe, args: argparse.Namespace):
    from frx_plugin.passes import AnalysisConfig, plan_pass

    config = AnalysisConfig(n_bootstrap=args.n_bootstrap, seed=args.seed)
    return plan_pass(probe, config, counterfactuals=args.counterfactuals, on_error="raise",
                              significance_samples=args.significance_samples, max_error_pairs=args.max_error_pairs)


def _trainer(args: argparse.Namespace, callbacks: list, precision: str, logs: Path | None, name: str, devices: int = 1,
             accelerator: str | None = None, strategy: Any = "auto"):
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(str(logs), name=name) if logs is not None else False
    return Trainer(
        max_epochs=args.epochs, accelerator=accelerator or ("gpu" if args.device == "cuda" else "cpu"), devices=devices,
        strategy=strategy, precision=precision, callbacks=callbacks, logger=logger, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1, num_sanity_val_steps=0,
    )


# --------------------------------------------------------------------------- the parts


def _passes(records: list[dict]) -> list[dict]:
    return [{"epoch": r["epoch"], "timing": dict(r.get("timing") or {})} for r in records]


def _summary(passes: list[dict], images: int) -> dict[str, Any]:
    """Median of each timing key over the passes after the first (all of them when there is one)."""
    later = passes[1:] or passes
    keys = sorted({k for p in later for k in p["timing"]})
    median = {k: statistics.median(p["timing"].get(k, 0.0) for p in later) for k in keys}
    if median.get("embed_s"):
        median["after_over_embed"] = median.get("after_embed_s", 0.0) / median["embed_s"]
        median["faces_per_s"] = images / median["embed_s"]
    return median


def _fresh(folder: Path) -> Path:
    """``folder`` emptied (an earlier run's history would be continued, not replaced)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def train_run(name: str, kind: str, precision: str, args: argparse.Namespace, runs_dir: Path) -> tuple[dict, Any]:
    """One Trainer run with the callback; returns its figures and the trained backbone."""
    module, probe, loader, transform, dim, description = _build(kind, args)
    folder = _fresh(runs_dir / name)
    frx = _callback(probe, args, folder / "frx", transform)
    trainer = _trainer(args, [frx], precision, folder if args.out else None, "logs")
    started = time.perf_counter()
    trainer.fit(module, loader)
    wall = time.perf_counter() - started
    records = frx.history.records
    if len(records) != args.epochs + 1:
        raise RuntimeError(f"{name}: the callback recorded {len(records)} passes, expected {args.epochs + 1} "
                           f"(failures: {frx.failures})")
    passes = _passes(records)
    figures = {
        "backbone": kind, "description": description, "precision": precision, "embedding_dim": dim,
        "probe_images": len(probe), "size": args.size if kind == "demo" else args.iresnet_size, "epochs": args.epochs,
        "train_steps": int(trainer.global_step), "wall_s": wall, "passes": passes, "median": _summary(passes, len(probe)),
        "tar_first": (records[0].get("verification") or {}).get("tar"), "tar_last": (records[-1].get("verification") or {}).get("tar"),
        "first_record": records[0],
    }
    backbone = module.backbone.cpu().eval()  # the GPU holds only what a later part measures
    del trainer, frx, module
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return figures, backbone


def _flatten(value: Any, where: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k in value:
            _flatten(value[k], f"{where}.{k}" if where else str(k), out)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            name = item.get("name") if isinstance(item, dict) and "name" in item else i
            _flatten(item, f"{where}[{name}]", out)
    else:
        out[where] = value


def _category(path: str) -> str:
    if path.startswith("attributes["):
        field = path.rsplit(".", 1)[-1]
        return "leakage" if field.startswith("leakage") else "metric" if field in ("value", "low", "high") else "attributes (other)"
    if path.startswith("verification."):
        return "verification TAR" if path.endswith(".tar") else "verification (other)"
    for prefix, name in (("significance", "significance"), ("error_attribution", "error attribution"), ("recovery", "two-stage")):
        if path.startswith(prefix):
            return name
    return "other"


def compare_records(a: dict, b: dict) -> dict[str, Any]:
    """Every measure of two records: the largest absolute difference, per category and overall, and what differs otherwise."""
    fa, fb = {}, {}
    _flatten({k: v for k, v in a.items() if k not in _NOT_MEASURES}, "", fa)
    _flatten({k: v for k, v in b.items() if k not in _NOT_MEASURES}, "", fb)
    diffs: list[tuple[float, str, Any, Any]] = []
    mismatched = sorted(set(fa) ^ set(fb))
    compared = 0
    for path in sorted(set(fa) & set(fb)):
        x, y = fa[path], fb[path]
        if isinstance(x, bool) or isinstance(y, bool) or not isinstance(x, (int, float)) or not isinstance(y, (int, float)):
            if x != y:
                mismatched.append(path)
            continue
        compared += 1
        if isinstance(x, int) and isinstance(y, int):
            if x != y:
                mismatched.append(path)
            continue
        if math.isnan(x) and math.isnan(y):
            continue
        diffs.append((abs(float(x) - float(y)) if math.isfinite(x) and math.isfinite(y) else math.inf, path, x, y))
    diffs.sort(key=lambda d: -d[0])
    by_category: dict[str, float] = {}
    for d, path, _, _ in diffs:
        by_category[_category(path)] = max(by_category.get(_category(path), 0.0), d)
    return {
        "max_abs_diff": diffs[0][0] if diffs else 0.0,
        "where": diffs[0][1] if diffs and diffs[0][0] > 0 else None,
        "by_category": by_category,
        "worst": [{"path": p, "a": x, "b": y, "diff": d} for d, p, x, y in diffs[:5]],
        "values_compared": compared,
        "mismatched": [{"path": p, "a": fa.get(p), "b": fb.get(p)} for p in mismatched[:10]],
        "n_mismatched": len(mismatched),
    }


@contextlib.contextmanager
def _no_tf32():
    """fp32 on CUDA as on the CPU: TF32 off for convolutions and matrix products, put back after."""
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def compare_devices(kind: str, backbone: torch.nn.Module, args: argparse.Namespace) -> dict[str, Any]:
    """One pass of ``backbone`` on ``--device`` and one of a CPU copy (another CPU copy on ``--device cpu``)."""
    from frx_plugin.model import embed_probe_set
    from frx_plugin.passes import run_pass

    probe = _probe(kind, args, args.compare_images)
    plan = _plan(probe, args)
    device = torch.device(args.device)
    first = copy.deepcopy(backbone).eval().to(device)
    second = copy.deepcopy(backbone).eval().cpu()
    rows = torch.arange(min(len(probe), 512))
    with _no_tf32() if device.type == "cuda" else contextlib.nullcontext():
        a = run_pass(first, probe, plan)
        za = embed_probe_set(first, probe, rows).float().cpu()
    b = run_pass(second, probe, plan)
    zb = embed_probe_set(second, probe, rows).float().cpu()
    reference = b.report.to_record()
    result = compare_records(a.report.to_record(), reference)
    result.update({
        "backbone": kind, "probe_images": len(probe), "devices": [str(device), "cpu"], "tf32": False if device.type == "cuda" else None,
        "embedding_max_abs_diff": float((za - zb).abs().max()), "embedding_rows_compared": int(rows.numel()),
        "tolerance": args.tolerance, "timing": {f"{device} (first)": a.timing, "cpu (second)": b.timing},
    })
    result["ok"] = result["max_abs_diff"] <= args.tolerance and result["n_mismatched"] == 0
    if device.type == "cuda":  # what training sees: PyTorch's default TF32 convolutions (information, no check)
        with_tf32 = compare_records(run_pass(first, probe, plan).report.to_record(), reference)
        result["with_default_tf32"] = {k: with_tf32[k] for k in ("max_abs_diff", "where", "by_category", "n_mismatched")}
    del first, second
    return result


def memory_check(kind: str, backbone: torch.nn.Module, args: argparse.Namespace) -> dict[str, Any]:
    """``--memory-passes`` passes of the trained backbone on CUDA: peak and allocated memory after each."""
    from frx_plugin.passes import run_pass

    probe = _probe(kind, args)
    plan = _plan(probe, args)
    model = backbone.eval().to("cuda")
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    peaks, after, timings = [], [], []
    for _ in range(args.memory_passes):
        torch.cuda.reset_peak_memory_stats()
        result = run_pass(model, probe, plan)
        timings.append(dict(result.timing))
        del result
        gc.collect()
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated())
        after.append(torch.cuda.memory_allocated())
    model.cpu()  # the next backbone's check starts from an empty GPU
    growth = after[-1] - after[0]
    passes = [{"epoch": None, "timing": t} for t in timings]
    return {
        "backbone": kind, "probe_images": len(probe), "allocated_before": before, "peak": max(peaks), "peaks": peaks,
        "peak_above_before": max(peaks) - before, "allocated_after": after, "growth": growth, "ok": growth <= 0,
        "passes": passes, "median": _summary(passes, len(probe)),
    }


# --------------------------------------------------------------------------- two processes


def ddp_worker(folder: Path) -> int:
    """One rank of the 2-process run (Lightning starts the second with this same command line)."""
    from lightning.pytorch.strategies import DDPStrategy

    _quiet_lightning()
    options = json.loads((folder / "options.json").read_text())
    args = argparse.Namespace(**options)
    cuda = args.ddp_backend == "nccl"
    module, probe, loader, transform, _, _ = _build("demo", args)
    frx = _callback(probe, args, folder / "frx", transform)
    trainer = _trainer(args, [frx], "32-true", None, "ddp", devices=2, accelerator="gpu" if cuda else "cpu",
                       strategy=DDPStrategy(process_group_backend=args.ddp_backend))
    started = time.perf_counter()
    trainer.fit(module, loader)
    wall = time.perf_counter() - started
    if trainer.is_global_zero:
        records = frx.history.records
        result = {"world_size": trainer.world_size, "backend": args.ddp_backend, "wall_s": wall,
                  "passes": _passes(records), "first_record": records[0] if records else None, "failures": frx.failures}
        (folder / "result.json").write_text(json.dumps(result, default=str))
    return 0


def ddp_run(args: argparse.Namespace, runs_dir: Path, single: dict | None) -> dict[str, Any]:
    """The 2-process run in a child process (its own CUDA context), or why it was skipped."""
    if "ddp" in args.skip or args.ddp == "off":
        return {"skipped": "left out (--ddp off or --skip ddp)"}
    if args.ddp == "auto":
        if args.device != "cuda":
            return {"skipped": "--device cpu: the 2-process run uses NCCL across 2 GPUs (--ddp cpu runs it with gloo)"}
        count = torch.cuda.device_count()
        if count < 2:
            return {"skipped": f"torch.cuda.device_count() is {count}: the 2-process NCCL run needs 2 GPUs"}
    backend = "nccl" if args.ddp == "auto" else "gloo"
    folder = _fresh(runs_dir / "ddp")
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    options.update(ddp_backend=backend, out=None)
    (folder / "options.json").write_text(json.dumps(options))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(_ROOT), str(_ROOT / "adapters"), os.environ.get("PYTHONPATH", "")]))
    if backend == "gloo":
        env.setdefault("OMP_NUM_THREADS", "1")
    started = time.perf_counter()
    # its own session: on a timeout both ranks (Lightning starts the second) are stopped, not only the first
    worker = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--ddp-worker", str(folder)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = worker.communicate(timeout=args.ddp_timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, 9)
        stdout, stderr = worker.communicate()
        return {"failed": f"the 2-process run took longer than --ddp-timeout {args.ddp_timeout:g} s", "backend": backend,
                "stderr_tail": (stderr or "").strip().splitlines()[-15:]}
    wall = time.perf_counter() - started
    if worker.returncode != 0 or not (folder / "result.json").exists():
        tail = (stderr or stdout or "").strip().splitlines()[-15:]
        return {"failed": f"exit status {worker.returncode}", "backend": backend, "stderr_tail": tail}
    result = json.loads((folder / "result.json").read_text())
    result["process_wall_s"] = wall
    result["median"] = _summary(result["passes"], args.probe_images)
    if single is not None and result.get("first_record"):
        result["epoch0_vs_single_process"] = compare_records(single["first_record"], result["first_record"])
    result.pop("first_record", None)
    return result


# --------------------------------------------------------------------------- output


def hardware(args: argparse.Namespace) -> dict[str, Any]:
    import lightning

    info = {
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "lightning": lightning.__version__, "python": platform.python_version(), "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "device": args.device, "gpu": None, "gpu_count": 0,
    }
    if args.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count(), gpu_memory_mib=props.total_memory // MIB,
                    tf32_conv=torch.backends.cudnn.allow_tf32, tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
    return info


def _f(value: Any, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _mib(value: int) -> str:
    return f"{value / MIB:,.1f}"


def markdown(results: dict[str, Any]) -> str:
    hw, lines = results["hardware"], []
    gpu = f"{hw['gpu']} ({hw['gpu_memory_mib']:,} MiB, {hw['gpu_count']} visible)" if hw["gpu"] else "none (--device cpu)"
    lines += [(f"GPU: {gpu}; torch {hw['torch']}, CUDA {hw['cuda'] or 'n/a'}, cuDNN {hw['cudnn'] or 'n/a'}, lightning {hw['lightning']}, "
               f"Python {hw['python']}; {hw['cpu_cores']} CPU cores, {hw['torch_threads']} torch threads"), ""]
    runs = results["runs"]
    lines += ["## Training with the callback (one device)", "",
              "| run | backbone | precision | probe | epochs (steps) | train wall (s) | TAR first → last |", "|---|---|---|---|---|---|---|"]
    for name, r in runs.items():
        lines.append(f"| {name} | {r['description']} | {r['precision']} | {r['probe_images']:,} × {r['size']}² | {r['epochs']} ({r['train_steps']}) "
                     f"| {r['wall_s']:.1f} | {_f(r['tar_first'], 3)} → {_f(r['tar_last'], 3)} |")
    lines += ["", "## Pass split (seconds; the callback's timing of each pass)", "",
              "| run | pass (epoch) | embed_s | after_embed_s | counterfactual_s | two_stage_s | after / embed |", "|---|---|---|---|---|---|---|"]
    sources = [(name, r["passes"]) for name, r in runs.items()]
    sources += [(f"{m['backbone']} memory passes", m["passes"]) for m in results.get("memory") or []]
    for name, passes in sources:
        for i, p in enumerate(passes):
            t = p["timing"]
            label = p["epoch"] if p["epoch"] is not None else f"#{i + 1}"
            ratio = t.get("after_embed_s", 0) / t["embed_s"] if t.get("embed_s") else math.nan
            lines.append(f"| {name} | {label} | {_f(t.get('embed_s'))} | {_f(t.get('after_embed_s'))} | {_f(t.get('counterfactual_s'))} "
                         f"| {_f(t.get('two_stage_s'))} | {ratio:.1%} |")
    medians = [(name, r["median"]) for name, r in runs.items()]
    medians += [(f"{m['backbone']} memory passes", m["median"]) for m in results.get("memory") or []]
    lines += ["", "median over the passes after the first: " + "; ".join(
        f"{name} embed {m['embed_s']:.2f} s ({m['faces_per_s']:,.0f} faces/s), after {m['after_embed_s']:.2f} s, counterfactual "
        f"{m.get('counterfactual_s', 0):.2f} s" for name, m in medians if m.get("embed_s"))]
    lines += ["", f"## GPU memory of a pass ({results['options']['memory_passes']} passes of the trained backbone, full probe set)", ""]
    memory = results.get("memory")
    if memory is None:
        lines.append(f"GPU memory: n/a ({results['hardware']['device']})")
    elif not memory:
        lines.append("GPU memory: left out (--skip memory)")
    else:
        lines += ["| backbone | allocated before (MiB) | peak of a pass (MiB) | peak above before (MiB) "
                  "| allocated after each pass (MiB) | growth | no growth |",
                  "|---|---|---|---|---|---|---|"]
        for m in memory:
            lines.append(f"| {m['backbone']} | {_mib(m['allocated_before'])} | {_mib(m['peak'])} | {_mib(m['peak_above_before'])} "
                         f"| {', '.join(_mib(a) for a in m['allocated_after'])} | {m['growth']:+,} B | {'yes' if m['ok'] else 'NO'} |")
    lines += ["", "## The same weights on two devices (one pass each; every measure compared)", ""]
    comparison = results.get("comparison") or []
    if not comparison:
        lines.append("comparison: left out (--skip compare)")
    else:
        lines += ["| backbone | devices | probe | largest abs. difference | where | ≤ tol | leakage | metric | TAR | significance | errors "
                  "| embeddings (max) | other mismatches |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for c in comparison:
            cat = c["by_category"]
            lines.append(
                f"| {c['backbone']} | {' vs '.join(c['devices'])} | {c['probe_images']:,} | {c['max_abs_diff']:.3g} | {c['where'] or '–'} "
                f"| {'yes' if c['ok'] else 'NO'} ({c['tolerance']:g}) | {cat.get('leakage', 0):.3g} | {cat.get('metric', 0):.3g} "
                f"| {cat.get('verification TAR', 0):.3g} | {cat.get('significance', 0):.3g} | {cat.get('error attribution', 0):.3g} "
                f"| {c['embedding_max_abs_diff']:.3g} | {c['n_mismatched']} |")
        if any(c.get("tf32") is False for c in comparison):
            lines.append("\nTF32 was off during the CUDA passes above (elsewhere it is on for convolutions, PyTorch's default); "
                         "with it on, the largest differences are " + "; ".join(
                             f"{c['backbone']} {c['with_default_tf32']['max_abs_diff']:.3g} ({c['with_default_tf32']['where'] or '–'})"
                             for c in comparison if "with_default_tf32" in c) + ".")
    lines += ["", "## Two processes (DDP)", ""]
    ddp = results["ddp"]
    if "skipped" in ddp:
        lines.append(f"2-process run skipped: {ddp['skipped']}")
    elif "failed" in ddp:
        lines.append(f"2-process run FAILED ({ddp.get('backend')}): {ddp['failed']}")
    else:
        m = ddp["median"]
        lines.append(f"{ddp['world_size']} processes, {ddp['backend']}: {len(ddp['passes'])} passes in {ddp['wall_s']:.1f} s of training; "
                     f"median embed {m.get('embed_s', 0):.2f} s, after {m.get('after_embed_s', 0):.2f} s, "
                     f"counterfactual {m.get('counterfactual_s', 0):.2f} s")
        same = ddp.get("epoch0_vs_single_process")
        if same:
            lines.append(f"epoch-0 pass against the single-process run's: largest abs. difference {same['max_abs_diff']:.3g} "
                         f"({same['where'] or '–'}), {same['n_mismatched']} other mismatches")
    lines += ["", "seconds per part: " + ", ".join(f"{name} {seconds:.0f}" for name, seconds in results["stages_s"].items())]
    lines += ["", "checks: " + "; ".join(f"{name} {'ok' if ok else 'FAILED'}" for name, ok in results["checks"].items())
              + f". {results['wall_s']:.0f} s in all."]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


class _Stages:
    """Which part is running (for the failure line) and how long each took."""

    def __init__(self) -> None:
        self.current, self.seconds = "setup", {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        self.current, started = name, time.perf_counter()
        print(f"[gpu.py] {name} …", file=sys.stderr, flush=True)
        yield
        self.seconds[name] = time.perf_counter() - started


def run(args: argparse.Namespace, stages: _Stages) -> tuple[dict[str, Any], bool]:
    started = time.perf_counter()
    results: dict[str, Any] = {"hardware": hardware(args), "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    with contextlib.ExitStack() as stack:
        if args.out:
            runs_dir = args.out.parent / f"{args.out.stem}-runs"
            runs_dir.mkdir(parents=True, exist_ok=True)
        else:
            runs_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="frx-gpu-")))
        runs, backbones = {}, {}
        plan = [("demo-fp32", "demo", "32-true")]
        if "bf16" not in args.skip:
            plan.append(("demo-bf16-mixed", "demo", "bf16-mixed"))
        if "iresnet" not in args.skip:
            plan.append(("iresnet50-fp32", "iresnet50", "32-true"))
        for name, kind, precision in plan:
            with stages(f"training {name}"):
                runs[name], backbone = train_run(name, kind, precision, args, runs_dir)
                backbones.setdefault(kind, backbone)  # the fp32 run's backbone of each kind
        results["runs"] = runs
        results["comparison"] = []
        if "compare" not in args.skip:
            for kind, backbone in backbones.items():
                with stages(f"comparing {args.device} with cpu ({kind})"):
                    results["comparison"].append(compare_devices(kind, backbone, args))
        results["memory"] = None
        if args.device == "cuda":
            results["memory"] = []
            if "memory" not in args.skip:
                for kind, backbone in backbones.items():
                    with stages(f"memory ({kind})"):
                        results["memory"].append(memory_check(kind, backbone, args))
        with stages("two processes"):
            results["ddp"] = ddp_run(args, runs_dir, runs.get("demo-fp32"))
    checks = {f"{name} recorded {len(r['passes'])} passes": len(r["passes"]) == args.epochs + 1 for name, r in runs.items()}
    for c in results["comparison"]:
        checks[f"{c['backbone']} {' = '.join(c['devices'])} within {c['tolerance']:g}"] = c["ok"]
    for m in results["memory"] or []:
        checks[f"{m['backbone']} memory does not grow"] = m["ok"]
    ddp_ok = "failed" not in results["ddp"]
    checks["2-process run" + (" (skipped)" if "skipped" in results["ddp"] else "")] = ddp_ok
    results["checks"], results["stages_s"] = checks, stages.seconds
    results["wall_s"] = time.perf_counter() - started
    for run_figures in runs.values():
        run_figures.pop("first_record", None)
    broken = not ddp_ok
    return results, broken


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.ddp_worker is not None:
        return ddp_worker(args.ddp_worker)
    stages = _Stages()
    try:
        check_args(args)
        if args.out is not None and args.out.is_dir():
            raise UsageError(f"--out {args.out} is a folder; give a file name such as {args.out / 'gpu.json'}")
        _quiet_lightning()
        results, broken = run(args, stages)
    except UsageError as exc:
        print(f"gpu.py: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gpu.py: interrupted during {stages.current}", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the traceback for whoever debugs it, then one line saying where
        traceback.print_exc()
        print(f"gpu.py: FAILED during {stages.current}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    text = markdown(results)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1, default=str))
        print(f"\nwrote {args.out}")
    if broken:
        print(f"gpu.py: FAILED: the 2-process run: {results['ddp'].get('failed')}", file=sys.stderr)
        for line in results["ddp"].get("stderr_tail", []):
            print(f"    {line}", file=sys.stderr)
        return 1
    if args.strict and not all(results["checks"].values()):
        failed = [name for name, ok in results["checks"].items() if not ok]
        print(f"gpu.py: FAILED (--strict): {'; '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
