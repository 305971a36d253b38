"""Ground-truth validation of the counterfactuals: the latent and decoded paths against the exact one, and planted causes.

    python benchmarks/groundtruth.py --out DIR [--reuse] [--decoder-steps 200]

1. Trains a backbone exactly as ``frx demo`` does (``frx demo --out DIR/demo``; ``--reuse`` keeps a
   backbone already there) and embeds the demo's held-out probe set (400 identities × 4 images).
2. ``spearman_latent_vs_exact``: identity significance S_k of all 19 attributes on every probe
   sample, exact (the synthetic world re-renders each face with the attribute edited, the model
   re-embeds it) and latent (``frx_plugin.counterfactual`` least-norm move of the probe heads;
   the Gaussian-conditional variant is reported beside it), decoded (the two stages' conv decoders
   trained on the probe set's 2 identity-disjoint folds, as a pass trains them; each face's code edited
   along directions fitted on the other fold, rendered and re-embedded: ``frx_plugin.counterfactual.decoded``),
   and each path's rank correlation with the exact one.
3. ``planted_cause_top1``: for each attribute (the cause) and 24 probe faces i, a second face j
   is rendered from i's own parameters with the cause changed by a large step (binary flipped,
   categorical to the next class, continuous by 2 standard deviations towards the middle of its
   range) and every other continuous parameter jittered by 5% of its standard deviation: a
   genuine pair that differs in the cause and in nothing else beyond jitter. For each pair δ_m
   (j takes i's value of m) is computed for every attribute m on both paths; the figure is the
   share of pairs whose top-ranked δ names the cause — over the pairs that the backbone gets wrong
   (score ≤ τ at FMR 1e-3 on the probe set: the errors an explanation is for) and over all pairs. On the
   decoded path j's code is its embedding's code in the decoder of i's fold (the one that never saw i's
   identity), and δ_m compares the edited rendering with the unedited one.

Writes DIR/groundtruth.json and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch

from frx_plugin.counterfactual import counterfactual_heads, exact_embedder, identity_significance, latent_embedder, latent_model
from frx_plugin.counterfactual.decoded import decoded_embedder
from frx_plugin.model import embed_probe_set
from frx_plugin.models import BACKBONE_FILE, load_backbone
from frx_plugin.plugins import require_generator
from frx_plugin.synthetic import SyntheticFaceWorld, SyntheticProbeSet
from frx_plugin.two_stage import TwoStage, TwoStageConfig, run_two_stage, spearman
from frx_plugin.verification import verification


def embed_images(model, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.nn.functional.normalize(model(images), dim=1).double()


def planted_pairs(world: SyntheticFaceWorld, rows: torch.Tensor, cause: str, seed: int) -> dict[str, torch.Tensor]:
    """Parameters of faces j: i's own parameters, the cause moved by a large step, other continuous ones jittered."""
    params = world.parameters(rows)
    g = torch.Generator().manual_seed(seed)
    for spec in world.schema:
        if spec.kind == "continuous" and spec.name != cause:
            params[spec.name] = params[spec.name] + 0.05 * world.std(spec.name) * torch.randn(rows.numel(), generator=g)
    attribute = world.schema[cause]
    value = params[cause]
    if attribute.kind == "binary":
        params[cause] = 1 - value
    elif attribute.kind == "categorical":
        params[cause] = (value + 1) % attribute.num_classes
    else:
        spec = world._spec(cause)
        middle = 0.5 * (spec.low + spec.high)
        params[cause] = value + torch.where(value < middle, 2.0, -2.0) * world.std(cause)
    return params


def decoded_planted(decoding, folds: torch.Tensor, z_i: torch.Tensor, z_j: torch.Tensor, name, old, new, model) -> torch.Tensor:
    """cos(z_i, f(R(w_j + v))) on the decoded path: j's code in the decoder of i's fold, edited from ``old`` to ``new``
    of attribute ``name`` along that fold's directions (``name`` None: unedited), rendered, re-embedded."""
    out = torch.empty(z_i.shape[0], dtype=torch.float64)
    for fold in torch.unique(folds).tolist():
        where = (folds == fold).nonzero().squeeze(1)
        decoder = decoding.decoders[fold]
        codes = decoder.latent(z_j[where].float())
        if name is not None:
            codes = (codes.double() + decoding.directions(fold).shift(codes, name, old[where], new[where])).float()
        rendered = embed_images(model, decoder.render_latent(codes))
        out[where] = (z_i[where] * rendered).sum(1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--reuse", action="store_true", help="keep DIR/demo/backbone.safetensors if it is there")
    parser.add_argument("--pairs-per-attribute", type=int, default=24)
    parser.add_argument("--latent-mode", choices=("least_norm", "conditional"), default="conditional",
                        help="the latent path whose S_k and δ are reported as 'latent' (the other mode's S_k is reported beside it)")
    parser.add_argument("--decoder-steps", type=int, default=TwoStageConfig.steps, help="steps of each fold's decoder (a pass's default)")
    args = parser.parse_args()
    out = Path(args.out)
    demo = out / "demo"
    started = time.perf_counter()
    if not (args.reuse and (demo / BACKBONE_FILE).is_file()):
        subprocess.run([sys.executable, "-m", "frx_plugin", "demo", "--out", str(demo), "--overwrite"], check=True)
    trained = time.perf_counter()
    model, description = load_backbone(demo / BACKBONE_FILE)
    probe = SyntheticProbeSet(**description["probe"])
    world = probe.world
    schema, labels, identity = probe.schema, probe.labels, probe.identity
    z = embed_probe_set(model, probe)
    tau = verification(z, identity, fmr=1e-3).threshold
    _, generator = require_generator(probe)

    # the heads the latent moves invert, and their held-out AUROC / R² that calibrate the moves (as a pass makes them)
    directions, bias, held_out = counterfactual_heads(z, identity, labels, schema)

    # 1. identity significance, exact and latent, on every probe sample
    rows = torch.arange(len(probe))
    exact = identity_significance(z, identity, schema, labels, exact_embedder(model, generator), rows, n_bootstrap=0)
    latent = {}
    for mode in ("least_norm", "conditional"):
        model_latent = latent_model(z, labels, schema, directions, bias, mode=mode, held_out=held_out)
        latent[mode] = identity_significance(z, identity, schema, labels, latent_embedder(model_latent, z, labels), rows, n_bootstrap=0)
    names = [n for n in schema.names if n in exact and n in latent["least_norm"]]
    correlation = {mode: spearman([exact[n].value for n in names], [latent[mode][n].value for n in names]) for mode in latent}

    # the decoded path: the two stages' decoders, trained as a pass trains them (2 identity-disjoint folds)
    decoder_start = time.perf_counter()
    stages = TwoStage(probe, TwoStageConfig(steps=args.decoder_steps, n_bootstrap=0, figure_faces=0))
    recovery, results = run_two_stage(stages, z.cpu(), model)
    stages.fresh_folds = {r.fold for r in results if r.error is None}
    decoder_seconds = time.perf_counter() - decoder_start
    decoding = decoded_embedder(model, stages, z, labels, schema)
    decoded = identity_significance(z, identity, schema, labels, decoding, rows, n_bootstrap=0)
    correlation_decoded = spearman([exact[n].value for n in names], [decoded[n].value for n in names])
    decoded_seconds = time.perf_counter() - decoder_start - decoder_seconds

    # 2. planted causes
    planted_latent = latent_model(z, labels, schema, directions, bias, mode=args.latent_mode, held_out=held_out)
    chosen = torch.unique(torch.linspace(0, len(probe) - 1, args.pairs_per_attribute).round().long())
    hits = {"exact": [], "latent": [], "decoded": []}
    own_fold = stages.folds[chosen]
    per_cause = {}
    for c, cause in enumerate(schema.names):
        params = planted_pairs(world, chosen, cause, seed=c)
        z_i = z[chosen].double()
        z_j = embed_images(model, world.render_parameters(params))
        score = (z_i * z_j).sum(1)
        own = world.parameters(chosen)
        deltas = {path: torch.zeros(chosen.numel(), len(schema)) for path in hits}
        unedited = decoded_planted(decoding, own_fold, z_i, z_j, None, None, None, model)
        for m, name in enumerate(schema.names):
            aligned = dict(params)
            aligned[name] = own[name]
            if bool((aligned[name] == params[name]).all()):
                continue  # nothing to align: δ = 0
            deltas["exact"][:, m] = ((z_i * embed_images(model, world.render_parameters(aligned))).sum(1) - score).float()
            if name in planted_latent.cols:
                moved = planted_latent.move(z_j.float(), name, params[name], own[name]).double()
                deltas["latent"][:, m] = ((z_i * moved).sum(1) - score).float()
            deltas["decoded"][:, m] = (decoded_planted(decoding, own_fold, z_i, z_j, name, params[name], own[name], model)
                                       - unedited).float()
        error = score <= tau
        per_cause[cause] = {"pairs": int(chosen.numel()), "errors": int(error.sum()), "mean_score": float(score.mean())}
        for path in hits:
            top = deltas[path].argmax(1) == c
            hits[path].append((top, error))
            per_cause[cause][f"top1_{path}"] = float(top.double().mean())
            per_cause[cause][f"top1_{path}_errors"] = float(top[error].double().mean()) if bool(error.any()) else None

    def share(path: str, errors_only: bool) -> float:
        tops = torch.cat([t[e] if errors_only else t for t, e in hits[path]])
        return float(tops.double().mean()) if tops.numel() else math.nan

    n_errors = sum(int(e.sum()) for _, e in hits["exact"])
    document = {
        "command": "python benchmarks/groundtruth.py --out " + str(args.out),
        "backbone": str(demo / BACKBONE_FILE),
        "probe": description["probe"],
        "tau_at_fmr_1e-3": tau,
        "latent_mode": args.latent_mode,
        "spearman_latent_vs_exact": correlation[args.latent_mode],
        "spearman_decoded_vs_exact": correlation_decoded,
        "decoder": {"steps": args.decoder_steps, "folds": stages.config.n_folds, "errors": recovery["errors"],
                    "identity_similarity": recovery["identity_similarity"], "fit_seconds": decoder_seconds,
                    "significance_seconds": decoded_seconds},
        "spearman_by_latent_mode": correlation,
        "significance": {n: {"exact": exact[n].value, "latent_least_norm": latent["least_norm"][n].value,
                             "latent_conditional": latent["conditional"][n].value, "decoded": decoded[n].value} for n in names},
        "planted_cause_top1": {path: share(path, True) for path in hits},
        "planted_cause_top1_all_pairs": {path: share(path, False) for path in hits},
        "planted_pairs": sum(v["pairs"] for v in per_cause.values()),
        "planted_pairs_that_are_errors": n_errors,
        "per_cause": per_cause,
        "seconds": {"training": trained - started, "validation": time.perf_counter() - trained},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "groundtruth.json").write_text(json.dumps(document, indent=1, allow_nan=True), encoding="utf-8")
    print(json.dumps({k: document[k] for k in ("latent_mode", "spearman_latent_vs_exact", "spearman_decoded_vs_exact",
                                               "spearman_by_latent_mode", "decoder",
                                               "planted_cause_top1", "planted_cause_top1_all_pairs", "planted_pairs",
                                               "planted_pairs_that_are_errors", "seconds")}, indent=1))
    print("\n| attribute | S_k exact | S_k latent | S_k decoded | top-1 exact (errors) | top-1 latent | top-1 decoded | errors / pairs |")
    print("|---|---|---|---|---|---|---|---|")
    for n in names:
        p = per_cause[n]
        fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
        print(f"| {n} | {exact[n].value:.2e} | {latent[args.latent_mode][n].value:.2e} | {decoded[n].value:.2e} | "
              f"{fmt(p['top1_exact_errors'])} | {fmt(p['top1_latent_errors'])} | {fmt(p['top1_decoded_errors'])} | {p['errors']} / {p['pairs']} |")


if __name__ == "__main__":
    main()
