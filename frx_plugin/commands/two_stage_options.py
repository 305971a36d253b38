"""``--two-stage``, ``--decoder`` and the stage-2 role of ``--estimator`` on the commands that analyse a model.

With ``--two-stage`` a pass also decodes the embeddings into faces (``--decoder SPEC``, trained for the
model fold by fold on identity-disjoint folds) and reads the attributes off the decoded faces: the
``--estimator`` specs read what they can (a plugin's estimator takes precedence), and the estimator
trained on the probe set's own labelled faces (``trained``) reads the rest. ``--estimator trained``
alone uses the trained one for every attribute. Imports nothing heavy at module level (the command
line parses before torch is imported).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import Any

__all__ = ["TRAINED", "add_two_stage_options", "check_two_stage_options", "format_recovery_table", "labelling_estimators",
           "stage_two_estimators", "two_stage_config"]

TRAINED = "trained"


def add_two_stage_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--two-stage", action="store_true",
                        help="with --backbone: the paper's two stages as well: decode each embedding into faces (--decoder), read the "
                             "attributes off them (--estimator specs first, then an estimator trained on the probe set's own labelled "
                             "faces) and report recovery significance R_k beside the direct value, with the estimator's ceiling")
    parser.add_argument("--decoder", default=None, metavar="SPEC",
                        help="with --two-stage: the decoder, conv (default) or stylegan2:GENERATOR.pt[,encoder=...] (frx plugins lists them)")
    parser.add_argument("--decoder-steps", type=int, default=200, metavar="N",
                        help="with --two-stage: optimisation steps of each fold's decoder (default 200)")
    parser.add_argument("--decoder-folds", type=int, default=2, metavar="K",
                        help="with --two-stage: identity-disjoint folds, one decoder and one set of estimator heads each (default 2)")


def check_two_stage_options(args: argparse.Namespace, has_model: bool) -> None:
    """A ``ValueError`` naming the option that does not fit (before anything is opened)."""
    if not args.two_stage:
        for flag, value, default in (("--decoder", args.decoder, None), ("--decoder-steps", args.decoder_steps, 200),
                                     ("--decoder-folds", args.decoder_folds, 2)):
            if value != default:
                raise ValueError(f"{flag} goes with --two-stage")
        return
    if not has_model:
        raise ValueError("--two-stage goes with --backbone SPEC: an embedding file has no model to decode its embeddings with")
    if args.decoder_steps < 1:
        raise ValueError(f"--decoder-steps must be a positive integer, got {args.decoder_steps}")
    if args.decoder_folds < 2:
        raise ValueError(f"--decoder-folds must be at least 2 (identity-disjoint decoders), got {args.decoder_folds}")
    if args.decoder is not None:
        from frx_plugin.specs import parse_spec

        parse_spec(args.decoder, "--decoder")


def _kind(spec: str) -> str:
    from frx_plugin.specs import parse_spec

    return parse_spec(spec, "--estimator").kind


def labelling_estimators(specs: Sequence[str] | None) -> list[str]:
    """The ``--estimator`` specs that label the probe set (``trained`` reads only attributes it already labels)."""
    return [spec for spec in specs or () if _kind(spec) != TRAINED]


def stage_two_estimators(specs: Sequence[str] | None) -> tuple[str, ...] | None:
    """Stage 2's estimator specs: the given ones, then ``trained`` for the rest; none given: ``None`` (the first
    registered estimator that reads the probe set, then ``trained``)."""
    specs = list(specs or ())
    if not specs:
        return None
    if not any(_kind(spec) == TRAINED for spec in specs):
        specs.append(TRAINED)
    return tuple(specs)


def two_stage_config(args: argparse.Namespace, seed: int, n_bootstrap: int) -> Any:
    """The :class:`~frx_plugin.two_stage.TwoStageConfig` of the options, or ``None`` without ``--two-stage``."""
    if not args.two_stage:
        return None
    from frx_plugin.specs import decoder_options
    from frx_plugin.two_stage import TwoStageConfig

    name, options = decoder_options(args.decoder or "conv")
    return TwoStageConfig(decoder=name, decoder_options=options, estimator=stage_two_estimators(args.estimator),
                          n_folds=args.decoder_folds, steps=args.decoder_steps, seed=seed, n_bootstrap=n_bootstrap)


def format_recovery_table(recovery: dict[str, Any] | None) -> str:
    """The terminal table of a report's ``recovery``: R_k two-stage and direct with intervals, the estimator's ceiling
    (its R on held-out real faces), whether it reads the attribute, the spread across samples."""
    if not recovery:
        return ""

    def fmt(value: Any) -> str:
        return "   nan" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:6.3f}"

    def ci(entry: dict[str, Any] | None) -> str:
        return f"{fmt(entry.get('value'))} [{fmt(entry.get('low')).strip()}, {fmt(entry.get('high')).strip()}]" if entry else "     -"

    entries = recovery.get("attributes") or {}
    width = max([14, *(len(n) for n in entries)])
    heading = f"{'attribute':<{width}} {'R two-stage (95% CI)':<24} {'R direct (95% CI)':<24} {'ceiling':>7} {'spread':>7}"
    lines = [f"two-stage recovery (decoder {recovery.get('decoder')}, estimator {recovery.get('estimator')}, "
             f"{recovery.get('samples')} samples per z, {recovery.get('folds')} identity-disjoint folds)", heading, "-" * len(heading)]
    for name, entry in entries.items():
        mark = "" if entry.get("readable", "two_stage" in entry) else "  (unreadable: the estimator cannot read it from real faces)"
        lines.append(f"{name:<{width}} {ci(entry.get('two_stage')):<24} {ci(entry.get('direct')):<24} {fmt(entry.get('real_images')):>7} "
                     f"{fmt(entry.get('spread')):>7}{mark}")
    similarity = recovery.get("identity_similarity") or {}
    lines.append(f"cos(f(G(z)), z) of held-out faces {fmt(similarity.get('decoded')).strip()} (same person "
                 f"{fmt(similarity.get('genuine')).strip()}, different people {fmt(similarity.get('impostor')).strip()})")
    return "\n".join(lines)
