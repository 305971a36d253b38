"""What the counterfactuals add to a pass: the default pass against one with ``counterfactuals="off"``.

    python benchmarks/pass_cost.py [--epochs 3 --identities 200]       # the demo's model and probe set, in training
    python benchmarks/pass_cost.py --model mbf [--probe-images 240]    # a MobileFaceNet-sized model at 112×112
    python benchmarks/pass_cost.py --decoded frx-demo/backbone.safetensors [--repeats 3 --decoder-steps 20]

A real ``Trainer`` trains the demo's model (``FaceRecognitionModule``) on a synthetic world with
three ``AttributeRecoveryCallback``s on the demo's probe set (400 identities × 4 images at
64×64), each passing at the end of every epoch on the same weights, one after the other:

- ``off``: ``counterfactuals="off"`` (leakage and verification only);
- ``default``: the callback's defaults (exact counterfactuals on the synthetic world, the study
  scaled to the probe set: 51 probe rows for identity significance and 6 errors of each kind on the
  demo's 1,600 images);
- ``full``: the full default study whatever the probe's size (64 rows, 8 errors of each kind), the
  default before it was scaled.

With ``--model mbf`` the passes run on a MobileFaceNet-sized model (the seed's MobileFaceNet: 2.6 M
parameters, 0.23 GMAC per 112×112 image, untrained: the cost does not depend on the weights) over a
synthetic probe set of ``--probe-images`` images at 112×112 (the arcface_torch run of issue 21):
``off``, ``default`` (the budget scaled to the probe set) and ``fixed`` (64 rows and 8 errors of
each kind whatever the probe's size, the default before it was scaled), each ``--repeats`` times, interleaved.

With ``--decoded BACKBONE`` (a backbone ``frx demo`` trained) the passes run on its held-out probe set with
the two stages on (conv decoders, ``--decoder-steps`` steps per pass, warm-started): ``off`` (no
counterfactuals), ``decoded`` (the decoded path at its scaled budget) and ``exact`` (the synthetic
world re-renders), interleaved; the figure is each path's ``counterfactual_s`` against the pass's
embedding of the probe set (``embed_s``), the two-stage part (``two_stage_s``) reported beside.

Each pass times itself (``embed_s``, ``after_embed_s``, ``counterfactual_s``, ``two_stage_s``; their sum is the
pass). Target (issue 15): the default pass at most 2× the ``off`` pass, judged on the passes after
the first (which pays one-time costs: imports, allocator warm-up).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader

from frx_lightning.callback import AttributeRecoveryCallback
from frx_lightning.demo import DEMO_DEFAULTS, FaceRecognitionModule
from frx_plugin.synthetic import SyntheticFaceDataset, SyntheticFaceWorld, SyntheticProbeSet

VARIANTS = {
    "off": {"counterfactuals": "off"},
    "default": {},
    "full": {"significance_samples": 64, "max_error_pairs": 8},
}


class _Collect(Callback):
    """Reads each frx callback's timing after its pass (it runs after all of them)."""

    def __init__(self, callbacks: dict[str, AttributeRecoveryCallback]) -> None:
        self.callbacks = callbacks
        self.rows: list[tuple[int, dict[str, float]]] = []
        self.taken: dict[str, object] = {}  # the last pass read of each callback (each pass read once)

    def _take(self, epoch: int) -> None:
        row = {}
        for name, frx in self.callbacks.items():
            result = frx.loop.last_result
            if result is not None and result is not self.taken.get(name):
                row[name] = sum(result.timing.values())
                row[f"{name}_counterfactual_s"] = result.timing.get("counterfactual_s", 0.0)
                self.taken[name] = result
        if row:
            self.rows.append((epoch, row))

    def on_train_start(self, trainer, pl_module) -> None:
        self._take(0)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._take(trainer.current_epoch + 1)


def mbf_passes(probe_images: int, repeats: int) -> None:
    """Passes of a MobileFaceNet-sized model over a probe set at 112×112: off, default (scaled) and fixed (64 / 8)."""
    from frx_plugin.config import AnalysisConfig
    from frx_plugin.passes import plan_pass, run_pass
    from frx_plugin.seed_models import SeedMobileFaceNet

    torch.manual_seed(0)
    model = SeedMobileFaceNet().eval()
    probe = SyntheticProbeSet(probe_images // 3, 3, seed=0, size=112, first_identity=2_000_000)
    config = AnalysisConfig(fmr=0.01, batch_size=64)
    plans = {
        "off": plan_pass(probe, config, counterfactuals="off", on_error="raise"),
        "default": plan_pass(probe, config, on_error="raise"),
        "fixed": plan_pass(probe, config, on_error="raise", significance_samples=64, max_error_pairs=8),
    }
    run_pass(model, probe, plans["off"], announce=False)  # one-time costs (allocator, first renders) out of the way
    rows = []
    for _ in range(repeats):
        row = {}
        for name, plan in plans.items():
            report = run_pass(model, probe, plan, announce=False).report
            row[name] = sum(report.timing.values())
            row[f"{name}_counterfactual_s"] = report.timing["counterfactual_s"]
            if name == "default":
                row["budget"] = report.counterfactual_budget
        rows.append(row)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; a MobileFaceNet-sized model "
          f"(2.6 M parameters, 0.23 GMAC per image), {len(probe):,} probe images at 112×112, {len(probe.schema)} attributes; "
          f"default budget {rows[0]['budget']}")
    print()
    print("| repeat | off (s) | default (s) | of it counterfactuals (s) | default / off | fixed 64 / 8 (s) | fixed / off |")
    print("|---|---|---|---|---|---|---|")
    for i, row in enumerate(rows):
        print(f"| {i} | {row['off']:.1f} | {row['default']:.1f} | {row['default_counterfactual_s']:.1f} | "
              f"{row['default'] / row['off']:.2f}× | {row['fixed']:.1f} | {row['fixed'] / row['off']:.2f}× |")
    default = statistics.median(r["default"] / r["off"] for r in rows)
    fixed = statistics.median(r["fixed"] / r["off"] for r in rows)
    print(f"\nmedian: default / off {default:.2f}× (target ≤ 2×), fixed / off {fixed:.2f}×")


def decoded_passes(backbone: str, repeats: int, steps: int) -> None:
    """The demo backbone's passes with the two stages: counterfactuals off, decoded (scaled budget) and exact."""
    from frx_plugin.config import AnalysisConfig
    from frx_plugin.models import load_backbone
    from frx_plugin.passes import plan_pass, run_pass
    from frx_plugin.two_stage import TwoStage, TwoStageConfig

    model, description = load_backbone(backbone)
    probe = SyntheticProbeSet(**description["probe"])
    config = AnalysisConfig(n_bootstrap=0)
    stages = TwoStage(probe, TwoStageConfig(steps=steps, n_bootstrap=0, figure_faces=0))
    plans = {
        "off": plan_pass(probe, config, counterfactuals="off", on_error="raise"),
        "decoded": plan_pass(probe, config, counterfactuals="decoded", on_error="raise", decoder=True),
        "exact": plan_pass(probe, config, counterfactuals="exact", on_error="raise"),
    }
    run_pass(model, probe, plans["off"], announce=False, two_stage=stages)  # one-time costs, and the decoders' first fit
    rows = []
    for _ in range(repeats):
        for name, plan in plans.items():
            report = run_pass(model, probe, plan, announce=False, two_stage=stages).completed
            rows.append((name, dict(report.timing), report.counterfactual_budget, report.counterfactuals))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; {backbone} on {len(probe):,} probe "
          f"images at {probe.world.size}×{probe.world.size}, {len(probe.schema)} attributes; conv decoders, {steps} steps per pass")
    print()
    print("| path | embed_s | counterfactual_s | counterfactual / embed | two_stage_s | study (rows, errors of each kind) |")
    print("|---|---|---|---|---|---|")
    for name, timing, budget, path in rows:
        study = "–" if budget is None else f"{budget['rows']}, {budget['error_pairs']}"
        print(f"| {path or name} | {timing['embed_s']:.2f} | {timing['counterfactual_s']:.2f} | "
              f"{timing['counterfactual_s'] / timing['embed_s']:.2f} | {timing['two_stage_s']:.1f} | {study} |")
    for name in ("decoded", "exact"):
        ratio = statistics.median(t["counterfactual_s"] / t["embed_s"] for n, t, _, _ in rows if n == name)
        print(f"median {name} counterfactual_s / embed_s: {ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--identities", type=int, default=200, help="training identities (20 images each)")
    parser.add_argument("--model", choices=("demo", "mbf"), default="demo")
    parser.add_argument("--probe-images", type=int, default=240, help="with --model mbf: probe images (3 per identity)")
    parser.add_argument("--repeats", type=int, default=2, help="with --model mbf or --decoded: passes of each kind")
    parser.add_argument("--decoded", default=None, metavar="BACKBONE", help="the decoded path's cost on a backbone frx demo trained")
    parser.add_argument("--decoder-steps", type=int, default=20, help="with --decoded: decoder steps per pass (the fit is not what is timed)")
    args = parser.parse_args()
    if args.decoded:
        decoded_passes(args.decoded, args.repeats, args.decoder_steps)
        return
    if args.model == "mbf":
        mbf_passes(args.probe_images, args.repeats)
        return
    size = DEMO_DEFAULTS["size"]
    world = SyntheticFaceWorld(args.identities, 20, seed=0, size=size)
    loader = DataLoader(SyntheticFaceDataset(world), batch_size=64, shuffle=True, drop_last=True)
    probe = SyntheticProbeSet(DEMO_DEFAULTS["probe_identities"], DEMO_DEFAULTS["probe_images_per_identity"], seed=0, size=size,
                              first_identity=1_000_000)
    model = FaceRecognitionModule(num_classes=args.identities, input_size=size, total_steps=len(loader) * args.epochs)
    with tempfile.TemporaryDirectory() as out:
        frx = {name: AttributeRecoveryCallback(probe, out_dir=Path(out) / name, on_error="raise", **options)
               for name, options in VARIANTS.items()}
        collect = _Collect(frx)
        trainer = Trainer(
            max_epochs=args.epochs, accelerator="cpu", devices=1, callbacks=[*frx.values(), collect], logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        )
        started = time.perf_counter()
        trainer.fit(model, loader)
        wall = time.perf_counter() - started

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; the demo's probe set, "
          f"{len(probe):,} images at {size}×{size}; {args.epochs} epochs on {len(world):,} training images, {wall:.0f} s in all")
    print()
    print("| pass (epoch) | off (s) | default (s) | of it counterfactuals (s) | default / off | 64 rows, 8 errors (s) | 64 / 8 / off |")
    print("|---|---|---|---|---|---|---|")
    for epoch, row in collect.rows:
        print(f"| {epoch} | {row['off']:.2f} | {row['default']:.2f} | {row['default_counterfactual_s']:.2f} | "
              f"{row['default'] / row['off']:.2f}× | {row['full']:.2f} | {row['full'] / row['off']:.2f}× |")
    later = collect.rows[1:]
    if later:
        default = statistics.median(r["default"] / r["off"] for _, r in later)
        full = statistics.median(r["full"] / r["off"] for _, r in later)
        print(f"\nmedian over the passes after the first: default / off {default:.2f}× (target ≤ 2×), full / off {full:.2f}×")


if __name__ == "__main__":
    main()
