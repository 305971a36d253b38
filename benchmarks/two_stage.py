"""The two-stage path on a trained backbone (issue 5): decoded faces, the estimator, R_k of both paths, cost.

    python benchmarks/two_stage.py --out DIR [--demo-dir DIR/demo] [--steps 200] [--samples 4]

1. Takes the backbone ``frx demo`` trains (``--demo-dir``; trained there with ``frx demo`` when
   missing) and its held-out probe set (400 identities × 4 images, 64×64).
2. ``direct_pass_s``: one direct analysis pass as the callback runs it (embed the probe set,
   probe leakage, verification). ``two_stage_pass_s``: one two-stage pass from fresh decoders
   (train one decoder per fold, decode every held-out face ``--samples`` times, read them with
   the estimator), and ``two_stage_warm_pass_s``: the next pass, warm-started. The estimator's
   own training is cached on disk and reported apart (``estimator_s``: loading it, or training it
   on first use).
3. ``identity_similarity``: mean cos(f(G(z)), z) of the held-out faces' decodings against the
   mean cosine of different faces of the same person (genuine) and of different people (impostor).
4. The estimator's own held-out accuracy per attribute, and R_k of the two-stage and the direct
   path side by side with the estimator's R_k on the real faces, and the rank correlation of the
   two paths over the attributes the estimator can read.

Writes DIR/two_stage.json, DIR/decoded.png and DIR/recovery.png, and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from frx_plugin.figures import plot_decoded, plot_recovery
from frx_plugin.model import embed_probe_set
from frx_plugin.models import BACKBONE_FILE, load_backbone
from frx_plugin.passes import AnalysisConfig, probe_leakage
from frx_plugin.report import json_safe
from frx_plugin.synthetic import SyntheticProbeSet
from frx_plugin.two_stage import TwoStage, TwoStageConfig, run_two_stage
from frx_plugin.verification import verification


def fmt(value) -> str:
    return "–" if value is None or value != value else f"{value:.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--demo-dir", type=Path, default=None, help="a frx demo folder with backbone.safetensors (default OUT/demo)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--decoder-option", action="append", default=[], metavar="KEY=VALUE",
                        help="an option of the conv decoder, e.g. whiten_inputs=false or candidates=1 (repeatable)")
    args = parser.parse_args()
    options = {}
    for item in args.decoder_option:
        key, _, value = item.partition("=")
        options[key] = {"true": True, "false": False}.get(value.lower(), None)
        if options[key] is None:
            options[key] = float(value) if "." in value or "e" in value.lower() else int(value)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    demo = args.demo_dir or out / "demo"
    if not (demo / BACKBONE_FILE).is_file():
        subprocess.run([sys.executable, "-m", "frx_plugin", "demo", "--out", str(demo), "--overwrite"], check=True)
    model, description = load_backbone(demo / BACKBONE_FILE)
    probe = SyntheticProbeSet(**description["probe"])

    # one direct pass, as the callback runs it
    started = time.perf_counter()
    embeddings = embed_probe_set(model, probe)
    report = probe_leakage(embeddings, probe, AnalysisConfig())
    report.verification = verification(embeddings, probe.identity)
    direct_s = time.perf_counter() - started

    started = time.perf_counter()
    two_stage = TwoStage(probe, TwoStageConfig(steps=args.steps, samples=args.samples, decoder_options=options))
    estimator_s = time.perf_counter() - started
    started = time.perf_counter()
    recovery, results = run_two_stage(two_stage, embeddings, model)
    cold_s = time.perf_counter() - started
    started = time.perf_counter()
    warm, _ = run_two_stage(two_stage, embeddings, model)
    warm_s = time.perf_counter() - started

    first = next(r for r in results if r.fold == 0)
    plot_decoded(first.originals, first.decoded, out / "decoded.png", similarity=first.similarity,
                 title="held-out faces (left) and samples of G(z) from their frx demo embeddings")
    plot_recovery(warm, out / "recovery.png", title="frx demo backbone, second (warm-started) two-stage pass")
    document = {
        "command": "python benchmarks/two_stage.py " + " ".join(sys.argv[1:]),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "probe": description["probe"],
        "decoder_options": options,
        "direct_pass_s": direct_s,
        "estimator_s": estimator_s,
        "two_stage_pass_s": cold_s,
        "two_stage_warm_pass_s": warm_s,
        "ratio_two_stage_to_direct": warm_s / direct_s,
        "estimator_accuracy": dict(two_stage.estimator.accuracy),
        "first_pass": recovery,
        "second_pass": warm,
    }
    (out / "two_stage.json").write_text(json.dumps(json_safe(document), indent=1))

    similarity = warm["identity_similarity"]
    print(f"direct pass {direct_s:.2f} s; two-stage pass {cold_s:.1f} s from fresh decoders, {warm_s:.1f} s warm-started "
          f"({warm_s / direct_s:.0f}x the direct pass); estimator ready in {estimator_s:.1f} s")
    print(f"cos(f(G(z)), z) {fmt(similarity['decoded'])} (first pass {fmt(recovery['identity_similarity']['decoded'])}); "
          f"genuine {fmt(similarity['genuine'])}, impostor {fmt(similarity['impostor'])}")
    print(f"Spearman two-stage vs direct: {fmt(warm['spearman_two_stage_vs_direct'])} (first pass {fmt(recovery['spearman_two_stage_vs_direct'])})")
    print()
    print("| attribute | group | estimator accuracy (held out) | E on real faces R | R two-stage [95% CI] | R direct | spread |")
    print("|---|---|---|---|---|---|---|")
    for name, entry in sorted(warm["attributes"].items(), key=lambda kv: (kv[1].get("group") or "", kv[0])):
        accuracy = entry.get("estimator_accuracy") or {}
        shown = ", ".join(f"{k} {fmt(v)}" for k, v in accuracy.items())
        two = entry.get("two_stage") or {}
        ci = f"{fmt(two.get('value'))} [{fmt(two.get('low'))}, {fmt(two.get('high'))}]" if two else "–"
        flag = "" if entry.get("readable", True) else " (unreadable)"
        print(f"| {name} | {entry.get('group')} | {shown} | {fmt(entry.get('real_images'))}{flag} | {ci} | "
              f"{fmt(entry['direct']['value'])} | {fmt(entry.get('spread'))} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
