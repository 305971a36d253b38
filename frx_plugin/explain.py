"""``frx explain``: what caused each recognition error of a model on a probe set (DESIGN.md §2).

The default is the built-in pair: the synthetic world's held-out probe set and the backbone that
``frx demo`` trained on it (``<demo_dir>/backbone.safetensors``; trained first when missing).
Writes ``explanations.json`` — one entry per explained error pair (scores, τ, δ per attribute,
ranked, and the attributes whose counterfactual flips the decision) with the share of errors
each attribute explains — and, where a generator can render the faces, ``counterfactuals.png``.
With an embedding file there are no faces: the latent path, and no figure.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from frx_plugin.analysis import AnalysisConfig, analyze_probe, choose_counterfactual_path, embed_probe_set
from frx_plugin.counterfactual import (
    CounterfactualError,
    _scale,
    away_values,
    error_attribution,
    exact_embedder,
    explain_errors,
    latent_embedder,
    latent_model,
)
from frx_plugin.history import atomic_write_text
from frx_plugin.models import BACKBONE_FILE, load_backbone
from frx_plugin.verification import decision_errors

__all__ = ["explain", "EXPLANATIONS_FORMAT"]

EXPLANATIONS_FORMAT = "frx.explanations/1"


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _trained_backbone(demo_dir: Path, say: Callable[[str], None]):
    path = demo_dir / BACKBONE_FILE
    if not path.is_file():
        from frx_plugin.plugins import get_plugin_manager

        say(f"frx explain: no trained backbone at {path}; training one with frx demo (about 2 minutes)")
        code = get_plugin_manager().hook.frx_run_demo(options={"out": str(demo_dir)})
        if code is None:
            raise FileNotFoundError(
                f"no trained backbone at {path}, and no training adapter to make one: "
                "pip install -e \".[lightning]\" (then frx explain trains it), or run frx demo --out " + str(demo_dir)
            )
        if code != 0 or not path.is_file():
            raise RuntimeError(f"frx demo did not leave a backbone at {path} (exit code {code})")
    return load_backbone(path)


def explain(
    *,
    demo_dir: str | Path = "frx-demo",
    embeddings_file: str | Path | None = None,
    out_dir: str | Path = "frx-explain",
    fmr: float = 1e-3,
    max_pairs: int = 50,
    path: str = "auto",
    figure_pairs: int = 4,
    say: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
) -> dict[str, Any]:
    """Explain the errors of the verification decision at ``fmr``; write the files; return the document."""
    if not (isinstance(fmr, (int, float)) and 0.0 < float(fmr) < 1.0):
        raise ValueError(f"fmr must be a number in (0, 1), got {fmr!r}")
    if not isinstance(max_pairs, int) or isinstance(max_pairs, bool) or max_pairs < 1:
        raise ValueError(f"max_pairs must be a positive integer, got {max_pairs!r}")
    if path not in ("auto", "exact", "latent"):
        raise ValueError(f"path must be one of ['auto', 'exact', 'latent'], got {path!r}")
    out = Path(out_dir)
    config = AnalysisConfig(n_bootstrap=0, fmr=float(fmr))
    probe = model = None
    if embeddings_file is not None:
        from frx_plugin.embedding_set import read_embedding_set
        from frx_plugin.recovery import analyze_embeddings
        from frx_plugin.verification import verification

        if path == "exact":
            raise CounterfactualError(
                f"{embeddings_file}: an embedding file holds no faces, and exact counterfactuals need a generator "
                "(hook frx_register_generators) that renders a probe set; use the latent path"
            )
        z, identity, labels, schema = read_embedding_set(embeddings_file)
        z = torch.nn.functional.normalize(z, dim=1)
        report = analyze_embeddings(z, identity, labels, schema, n_bootstrap=0)
        report.verification = verification(z, identity, fmr=config.fmr)
        chosen, generator, source = "latent", None, str(embeddings_file)
    else:
        from frx_plugin.synthetic import SyntheticProbeSet

        model, description = _trained_backbone(Path(demo_dir), say)
        if not description.get("probe"):
            raise ValueError(f"{Path(demo_dir) / BACKBONE_FILE}: the backbone names no probe set to explain")
        probe = SyntheticProbeSet(**description["probe"])
        z = embed_probe_set(model, probe)
        identity, labels, schema = probe.identity, probe.labels, probe.schema
        report = analyze_probe(z, probe, config)
        chosen, generator = choose_counterfactual_path(probe, path)
        source = f"{probe.source} embedded by {Path(demo_dir) / BACKBONE_FILE}"
    if chosen == "exact":
        embed = exact_embedder(model, generator)
    else:
        if path == "auto" and embeddings_file is None:
            say("frx explain: no generator can render this probe set; using the latent path")
        heads = latent_model(z, labels, schema, report.tensors["probe_directions"], report.tensors["probe_bias"],
                             held_out={a.name: a.value for a in report.leakage})
        embed = latent_embedder(heads, z, labels)
    errors = decision_errors(z, identity, config.fmr, known=report.verification)
    explanations = explain_errors(errors, z, schema, labels, embed, max_pairs=max_pairs)
    document = {
        "format": EXPLANATIONS_FORMAT,
        "source": source,
        "path": chosen,
        "fmr": float(fmr),
        "tau": errors.tau,
        "verification": report.verification.to_record(),
        "counts": {
            "false_non_match": int(errors.false_non_match.shape[0]),
            "false_match": int(errors.false_match.shape[0]),
            "explained": len(explanations),
        },
        "attribution": error_attribution(explanations, list(schema.names)),
        "pairs": [
            {**e.to_record(), "identities": [int(identity[e.first]), int(identity[e.second])]} for e in explanations
        ],
    }
    atomic_write_text(out / "explanations.json", json.dumps(_clean(document), indent=1, allow_nan=False))
    figure = None
    if chosen == "exact" and explanations:
        figure = _figure(probe, generator, explanations, labels, schema, figure_pairs, out / "counterfactuals.png")
    document["files"] = [str(out / "explanations.json")] + ([str(figure)] if figure else [])
    return document


def _figure(probe, generator, explanations, labels, schema, count: int, path: Path) -> Path:
    """The first ``count`` pairs, alternating kinds: both faces and the second changed along its top attributes."""
    from frx_plugin.figures import plot_counterfactuals

    by_kind = [[e for e in explanations if e.kind == kind] for kind in ("false_non_match", "false_match")]
    chosen = []
    for i in range(count):
        for group in by_kind:
            if i < len(group) and len(chosen) < count:
                chosen.append(group[i])
    rows = []
    for e in chosen:
        first, second = torch.tensor([e.first]), torch.tensor([e.second])
        changed = []
        for name, delta in e.ranked()[:3]:
            if delta == 0.0:
                continue
            attribute = schema[name]
            if e.kind == "false_non_match":
                value = labels[name][first]
            else:
                scale = _scale(attribute, labels[name]) if attribute.kind == "continuous" else 1.0
                value, _ = away_values(attribute, labels[name][second], labels[name][first], scale)
            changed.append((name, generator.counterfactual(second, name, value)[0], e.score + delta))
        rows.append({"kind": e.kind, "tau": e.tau, "score": e.score, "first": probe.images(first)[0],
                     "second": probe.images(second)[0], "changed": changed})
    return plot_counterfactuals(rows, path, title="frx explain: each error pair, then face B changed one attribute at a time")
