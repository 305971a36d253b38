"""``frx explain``'s command line: its options and what it prints. Imports nothing heavy at module level (the
command line parses before torch is imported); :mod:`frx_plugin.commands.explain` does the work."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from frx_plugin.commands.common import check_output_folder, open_model_and_probe, progress_bar
from frx_plugin.commands.two_stage_options import check_two_stage_options, labelling_estimators, two_stage_config

__all__ = ["add_explain_parser", "run_explain"]


def add_explain_parser(sub: Any, model_options: Callable[[Any], None], output_options: Callable[[Any], None]) -> None:
    """The ``frx explain`` subcommand (``model_options``, ``output_options``: the options every model command shares)."""
    explain = sub.add_parser("explain", help="explain a model's recognition errors with counterfactuals")
    explain.add_argument("--demo-dir", default="frx-demo",
                         help="folder with frx demo's backbone.safetensors; trained there when missing (default ./frx-demo)")
    explain.add_argument("--embeddings", default=None, help="explain an embedding-set file instead (latent path, no figure)")
    model_options(explain)
    explain.add_argument("--out", default="frx-explain",
                         help="output folder for explanations.json and counterfactuals.png (default ./frx-explain; frx report FOLDER "
                              "makes its report.html)")
    explain.add_argument("--overwrite", action="store_true", help="replace the files of an earlier run in --out")
    explain.add_argument("--fmr", type=float, default=1e-3, help="false-match rate that sets the threshold τ (default 1e-3)")
    explain.add_argument("--max-pairs", type=int, default=50, help="error pairs explained of each kind (default 50)")
    explain.add_argument("--path", choices=("auto", "exact", "decoded", "latent"), default="auto",
                         help="exact: re-render with a generator; decoded: edit each face in a decoder's latent space, render it and "
                              "re-embed it (needs --decoder); latent: move embeddings; auto: exact where a generator exists, else decoded "
                              "with --decoder, else latent")
    explain.add_argument("--decoder", default=None, metavar="SPEC",
                         help="with --backbone: the decoder trained on the probe set's identity-disjoint folds for decoded counterfactual "
                              "faces of real photographs, conv or stylegan2:GENERATOR.pt[,encoder=...]")
    explain.add_argument("--decoder-steps", type=int, default=200, metavar="N",
                         help="with --decoder: optimisation steps of each fold's decoder (default 200)")
    explain.add_argument("--decoder-folds", type=int, default=2, metavar="K",
                         help="with --decoder: identity-disjoint folds, one decoder each (default 2)")
    explain.add_argument("--latent-mode", choices=("conditional", "least_norm"), default="conditional",
                         help="latent path: the expected move under the embeddings' covariance, or the least Euclidean move (default conditional)")
    output_options(explain)
    explain.set_defaults(func=run_explain)


def run_explain(args: argparse.Namespace) -> int:
    """``frx explain``: check the options, explain, print the attribution table and the files written."""
    from frx_plugin.commands.explain import EXPLANATIONS_FILE, FIGURE_FILE, check_options, explain
    from frx_plugin.specs import probe_with_kinds

    args.probe = probe_with_kinds(args.probe, args.kinds)
    check_options(args.fmr, args.max_pairs, args.path, args.latent_mode, 4, flags=True)
    if args.backbone is not None and args.embeddings is not None:
        raise ValueError("pass --embeddings FILE or --backbone SPEC, not both")
    if args.backbone is None and (args.probe or args.pairs or args.estimator or args.decoder):
        raise ValueError("--probe, --pairs, --estimator and --decoder go with --backbone SPEC")
    if args.decoder is None and (args.decoder_steps != 200 or args.decoder_folds != 2):
        raise ValueError(f"{'--decoder-steps' if args.decoder_steps != 200 else '--decoder-folds'} goes with --decoder SPEC")
    args.two_stage = args.decoder is not None  # the decoder's options are the two stages' (check_two_stage_options)
    check_two_stage_options(args, bool(args.backbone))
    if args.path == "decoded" and args.decoder is None:
        raise ValueError("--path decoded needs --decoder SPEC (conv, or stylegan2:GENERATOR.pt): the decoder renders the edited faces")
    check_output_folder(args.out, "--out", (EXPLANATIONS_FILE, FIGURE_FILE), overwrite=args.overwrite)
    model = probe = None
    if args.backbone is not None:
        model, probe = open_model_and_probe(args.backbone, args.probe, args.pairs, labelling_estimators(args.estimator), progress_bar())
    document = explain(
        model, probe, demo_dir=args.demo_dir, embeddings_file=args.embeddings, out_dir=args.out, fmr=args.fmr,
        max_pairs=args.max_pairs, path=args.path, latent_mode=args.latent_mode, model_name=args.backbone,
        decoder=two_stage_config(args, 0, 0),
    )
    counts = document["counts"]
    how = document["path"] + (f" ({document['latent_mode']})" if document["latent_mode"] else "")
    print(f"{how} counterfactuals; τ = {document['tau']:.4f} at FMR {document['fmr']:g}: "
          f"{counts['false_non_match']:,} false non-matches, {counts['false_match']:,} false matches, {counts['explained']} explained")
    shares = document["attribution"]
    if counts["explained"]:
        print(f"{'attribute':<16} {'all errors':>10} {'non-match':>10} {'match':>10}   (share of explained errors the attribute alone flips)")

        def share(value) -> str:
            return f"{'—':>10}" if value is None else f"{value:10.3f}"

        for name in sorted(shares["all"], key=lambda n: -(shares["all"][n] or 0.0)):
            print(f"{name:<16} {share(shares['all'][name])} {share(shares['false_non_match'][name])} {share(shares['false_match'][name])}")
    if document["path"] == "decoded" and counts["explained"]:
        print(f"{FIGURE_FILE}: the real faces of each shown error pair, their decodings, and the second face's decoding edited "
              "one attribute at a time, each with the score it gets")
    if document["path"] == "latent" and args.embeddings:
        print(f"{FIGURE_FILE} needs a generator that renders the faces (hook frx_register_generators); an embedding file has none, so none written")
    elif document["path"] == "latent" and args.backbone:
        print(f"{FIGURE_FILE} needs faces: no generator renders this probe set's (hook frx_register_generators), so none written; "
              "--decoder conv renders decoded counterfactual faces")
    elif document["path"] == "latent":
        print(f"{FIGURE_FILE} needs the exact path (a generator that renders the faces); none written on the latent path")
    elif not counts["explained"]:
        print(f"no recognition errors at FMR {document['fmr']:g}, so no {FIGURE_FILE}")
    print("wrote " + ", ".join(document["files"]))
    return 0
