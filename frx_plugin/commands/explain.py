"""``frx explain``: what caused each recognition error of a model on a probe set, found with counterfactuals.

The default is the built-in pair: the synthetic world's held-out probe set and the backbone that
``frx demo`` trained on it (``<demo_dir>/backbone.safetensors``; trained first when missing). A
model and a probe set of your own can be passed instead (from Python), or an embedding-set file.

Writes ``explanations.json`` (layout ``frx.explanations/1``)::

    {"format": "frx.explanations/1",
     "source": "<what was explained>",
     "path": "exact" | "decoded" | "latent",   # how the changed embeddings were made
     "latent_mode": "conditional" | "least_norm" | null,   # null on the exact path
     "fmr": 0.001, "tau": <threshold: accept when score > tau>,
     "verification": {...},                # Verification.to_record(): TAR at FMR, pair counts
     "counts": {"false_non_match": <all of them>, "false_match": <all of them>, "explained": <entries in pairs>},
     "attribution": {"all" | "false_non_match" | "false_match": {attribute: share of explained errors it flips}},
     "estimated": {attribute: estimator},  # only when estimators read attributes off the images
     "pairs": [{"pair": [i, j], "identities": [id_i, id_j], "kind": "false_non_match" | "false_match",
                "score": s, "tau": tau, "counterfactual": "align" | "away",
                "delta": {attribute: δ or null}, "ranked": [attributes, most against the error first],
                "deciding": [attributes whose δ alone flips the decision, in ranked order]}, ...]}

NaN is written as ``null``. Where a generator can render the faces (the exact path) it also writes
``counterfactuals.png``: for a few error pairs, the two faces and the second face changed along its
top-ranked attributes, each with the score it then gets. With a decoder (``decoder``, the command's
``--decoder``) on a probe set no generator renders (real photographs), the decoded path: decoders
trained on the probe set's identity-disjoint folds render each face edited in their latent space and
the model re-embeds it; the figure then shows both real faces, their decodings and the edited
decodings. With an embedding file there are no faces: the latent path, and no figure.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from frx_plugin.counterfactual import CounterfactualError, PairExplanation, error_attribution, explain_errors, pair_values
from frx_plugin.counterfactual.explanations import figure_pairs
from frx_plugin.counterfactual.measures import choose_counterfactual_path, counterfactual_embedder, probe_decision_errors
from frx_plugin.errors import OutputError
from frx_plugin.history import atomic_write_text
from frx_plugin.model import embed_probe_set
from frx_plugin.models import BACKBONE_FILE, load_backbone
from frx_plugin.passes import AnalysisConfig, PassPlan, run_pass
from frx_plugin.probe import ProbeSet
from frx_plugin.report import json_safe
from frx_plugin.verification import decision_errors

__all__ = ["explain", "check_options", "EXPLANATIONS_FORMAT", "EXPLANATIONS_FILE", "FIGURE_FILE"]

EXPLANATIONS_FORMAT = "frx.explanations/1"
EXPLANATIONS_FILE = "explanations.json"
FIGURE_FILE = "counterfactuals.png"

#: Counterfactual faces shown per error pair in the figure.
FIGURE_CHANGES = 3


def check_options(fmr: Any, max_pairs: Any, path: Any, latent_mode: Any, figure_pairs: Any, flags: bool = False) -> None:
    """Raise a ``ValueError`` naming the first option out of its range (``flags``: as the command line spells them)."""

    def name(option: str) -> str:
        return "--" + option.replace("_", "-") if flags else option

    if isinstance(fmr, bool) or not (isinstance(fmr, (int, float)) and 0.0 < float(fmr) < 1.0):
        raise ValueError(f"{name('fmr')} must be a number in (0, 1), got {fmr!r}")
    if not isinstance(max_pairs, int) or isinstance(max_pairs, bool) or max_pairs < 1:
        raise ValueError(f"{name('max_pairs')} must be a positive integer, got {max_pairs!r}")
    if path not in ("auto", "exact", "decoded", "latent"):
        raise ValueError(f"{name('path')} must be one of ['auto', 'exact', 'decoded', 'latent'], got {path!r}")
    if latent_mode not in ("conditional", "least_norm"):
        raise ValueError(f"{name('latent_mode')} must be 'conditional' or 'least_norm', got {latent_mode!r}")
    if not isinstance(figure_pairs, int) or isinstance(figure_pairs, bool) or figure_pairs < 0:
        raise ValueError(f"{name('figure_pairs')} must be a non-negative integer, got {figure_pairs!r}")


def _trained_backbone(demo_dir: Path, say: Callable[[str], None]):
    """The demo backbone at ``demo_dir`` (module in eval mode, description), trained with ``frx demo`` when missing."""
    path = demo_dir / BACKBONE_FILE
    if not path.is_file():
        from frx_plugin.commands.registry import run_plugin_command

        say(f"frx explain: no trained backbone at {path}; training one with frx demo (about 2 minutes)")
        try:
            code = run_plugin_command("demo", ["--out", str(demo_dir)])  # the command a training adapter registers
        except OutputError as exc:  # checked before it trains: say it for --demo-dir
            raise OutputError(f"--demo-dir {demo_dir} has no {BACKBONE_FILE}, and frx demo cannot train one there ({exc}); "
                              f"run frx demo --out {demo_dir} --overwrite, or pick another --demo-dir") from None
        if code is None:
            raise FileNotFoundError(
                f"no trained backbone at {path}, and no training adapter to make one: "
                "pip install -e \".[lightning]\" (then frx explain trains it), or run frx demo --out " + str(demo_dir)
            )
        if code != 0 or not path.is_file():
            raise RuntimeError(f"frx demo did not leave a backbone at {path} (exit code {code})")
    return load_backbone(path)


def explain(
    model: Any = None,
    probe: Any = None,
    *,
    demo_dir: str | Path = "frx-demo",
    embeddings_file: str | Path | None = None,
    out_dir: str | Path = "frx-explain",
    fmr: float = 1e-3,
    max_pairs: int = 50,
    path: str = "auto",
    latent_mode: str = "conditional",
    figure_pairs: int = 4,
    say: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
    model_name: str | None = None,
    decoder: Any = None,
) -> dict[str, Any]:
    """Explain the errors of the verification decision at ``fmr``; write the files; return the document.

    What is explained, in order of precedence:

    - ``embeddings_file``: an embedding-set file (:func:`frx_plugin.embedding_set.read_embedding_set`);
      always the latent path (``path="exact"`` is a :class:`CounterfactualError`), no figure;
    - ``model`` and ``probe``: a model (what the ``frx_embed`` hook embeds) and a probe set;
    - neither: the backbone in ``demo_dir`` and the synthetic probe set it names (trained with
      ``frx demo`` first when the file is missing).

    ``path``: "exact" re-renders with a generator (hook ``frx_register_generators``;
    :class:`CounterfactualError` without one), "latent" moves embeddings along the probe heads
    (``latent_mode``, see :func:`frx_plugin.counterfactual.latent_model`), "auto" takes exact where
    a generator renders the probe set and says so (through ``say``) when it falls back to latent.
    ``max_pairs``: error pairs explained of each kind, spread over the errors from the worst.
    ``figure_pairs``: pairs shown in ``counterfactuals.png`` (0: no figure). ``model_name``: how the
    document's ``source`` names the model (default its type). ``decoder``: a
    :class:`~frx_plugin.two_stage.TwoStageConfig` whose decoders are trained on the probe set's folds for the
    decoded path ("decoded", or "auto" where no generator renders the probe set).

    A probe set that lists its pairs (``probe.pairs``, a verification file) is judged on those
    pairs: τ is set by the listed impostor pairs and the errors are the listed pairs on the wrong
    side of it; otherwise every pair of the probe set counts.

    Returns the document written to ``<out_dir>/explanations.json`` (module docstring) with
    ``"files"`` added: the paths written.
    """
    check_options(fmr, max_pairs, path, latent_mode, figure_pairs)
    if embeddings_file is not None and (model is not None or probe is not None):
        raise ValueError("pass an embeddings_file or a model and probe set, not both")
    if (model is None) != (probe is None):
        raise ValueError("pass both a model and a probe set, or neither (then the demo backbone and its probe set)")
    out = Path(out_dir)
    config = AnalysisConfig(n_bootstrap=0, fmr=float(fmr))
    if embeddings_file is not None:
        if decoder is not None:
            raise ValueError("a decoder decodes a model's embeddings: it goes with a model and probe set, not an embedding file")
        subject = _embedding_file_subject(embeddings_file, path, config)
    else:
        subject = _model_subject(model, probe, demo_dir, path, config, say, model_name, decoder)
    model, probe = subject.model, subject.probe
    embed, attributes, unchanged = counterfactual_embedder(model, subject.z, subject.labels, subject.schema, subject.report,
                                                           subject.chosen, subject.generator, probe, latent_mode, two_stage=subject.stages,
                                                           identity=subject.identity)
    if unchanged:
        say(f"frx explain: the generator cannot change {unchanged}; they are left out")
    if probe is not None:
        errors = probe_decision_errors(subject.z, probe, subject.report, config.fmr)
    else:
        errors = decision_errors(subject.z, subject.identity, config.fmr, known=subject.report.verification)
    explanations = explain_errors(errors, subject.z, subject.schema, subject.labels, embed, max_pairs=max_pairs, attributes=attributes)
    from frx_plugin.commands.analyze import provenance  # one recipe for both files

    document = {**_document(subject, errors, explanations, attributes, fmr, latent_mode), **provenance("explain")}
    atomic_write_text(out / EXPLANATIONS_FILE, json.dumps(document, indent=1, allow_nan=False))
    files = [str(out / EXPLANATIONS_FILE), *_write_figure(subject, embed, explanations, figure_pairs, out / FIGURE_FILE, say)]
    document["files"] = files
    return document


def _write_figure(subject: _Subject, embed: Any, explanations: list[PairExplanation], count: int, path: Path,
                  say: Callable[[str], None]) -> list[str]:
    """``counterfactuals.png`` on the exact and decoded paths (``count`` pairs; none: no figure); an earlier run's
    figure that this run does not replace is removed. Returns the files written."""
    if subject.chosen == "exact" and explanations and count > 0:
        return [str(_figure(subject.probe, subject.generator, explanations, subject.labels, subject.schema, count, path))]
    if subject.chosen == "decoded" and explanations and count > 0:
        from frx_plugin.figures import plot_counterfactuals

        title = ("frx explain: each error pair (real faces A, B), their decodings, then G(B) with one attribute edited in the decoder's "
                 "latent space and re-embedded by the model; framed green where that change alone flips the decision at τ")
        return [str(plot_counterfactuals(embed.strip_rows(explanations, subject.probe, count=count), path, title=title))]
    if path.is_file():
        path.unlink()  # an earlier run's figure would contradict this run's explanations
        say(f"frx explain: removed {path} from an earlier run; this run makes no figure")
    return []


@dataclass
class _Subject:
    """What is explained: its embeddings with their labels, the analysis of them, and the counterfactual path chosen."""

    z: torch.Tensor
    identity: torch.Tensor
    labels: Any
    schema: Any
    report: Any
    chosen: str
    source: str
    model: Any = None
    probe: Any = None
    generator: Any = None
    stages: Any = None  # the two stages whose decoders render the decoded path


def _embedding_file_subject(embeddings_file: str | Path, path: str, config: AnalysisConfig) -> _Subject:
    """An embedding-set file: always the latent path (no faces to re-render)."""
    from frx_plugin.embedding_set import read_embedding_set

    if path == "exact":
        raise CounterfactualError(
            f"{embeddings_file}: an embedding file holds no faces, and exact counterfactuals need a generator "
            "(hook frx_register_generators) that renders a probe set; use the latent path (--path latent or auto)"
        )
    z, identity, labels, schema = read_embedding_set(embeddings_file)
    z = torch.nn.functional.normalize(z.to(torch.float32), dim=1)
    probe = ProbeSet(schema, identity, labels, source=str(embeddings_file))
    plan = PassPlan(config=dataclasses.replace(config, differentials=False), on_error="raise")
    report = run_pass(None, probe, plan, context={"framework": "frx explain", "model": None, "embeddings": str(embeddings_file)},
                      embeddings=z).report
    return _Subject(z, identity, labels, schema, report, "latent", str(embeddings_file))


def _model_subject(model: Any, probe: Any, demo_dir: str | Path, path: str, config: AnalysisConfig,
                   say: Callable[[str], None], model_name: str | None, decoder: Any = None) -> _Subject:
    """A model on a probe set, or (both None) the demo backbone in ``demo_dir`` on the synthetic probe set it names.

    With ``decoder`` (a two-stage configuration) the pass also trains its decoders, fold by fold, for the decoded path.
    """
    if model is None:
        from frx_plugin.synthetic import SyntheticProbeSet

        backbone = Path(demo_dir) / BACKBONE_FILE
        model, description = _trained_backbone(Path(demo_dir), say)
        if not description.get("probe"):
            raise ValueError(f"{backbone}: the backbone names no probe set to explain")
        probe = SyntheticProbeSet(**description["probe"])
        source = f"{probe.source} embedded by {backbone}"
    else:
        source = f"{getattr(probe, 'source', type(probe).__name__)} embedded by {model_name or type(model).__name__}"
    z = embed_probe_set(model, probe)
    chosen, generator = choose_counterfactual_path(probe, path, decoder is not None)
    stages = None
    if chosen == "decoded":
        from frx_plugin.two_stage import TwoStage

        stages = TwoStage(probe, decoder)
        say(f"frx explain: training {decoder.n_folds} decoders ({decoder.decoder}, {decoder.steps} steps each) on identity-disjoint "
            f"folds of {source} for the decoded counterfactuals")
    context = {"framework": "frx explain", "model": model_name or source}
    report = run_pass(model, probe, PassPlan(config=config, on_error="raise"), context=context, embeddings=z, two_stage=stages).report
    if stages is not None and (report is None or report.recovery is None or not stages.fresh_folds):
        problems = "; ".join(report.warnings if report is not None else []) or "no decoder was trained"
        raise CounterfactualError(f"the decoded counterfactuals need the decoders, and they could not be trained: {problems}")
    if chosen == "latent" and path == "auto":
        say(f"frx explain: no generator can render {source}; using the latent path (no counterfactual faces; --decoder SPEC "
            "renders them with a decoder trained on the probe set)")
    return _Subject(z, probe.identity, probe.labels, probe.schema, report, chosen, source, model, probe, generator, stages)


def _document(subject: _Subject, errors: Any, explanations: list[PairExplanation], attributes: list[str] | None,
              fmr: float, latent_mode: str) -> dict[str, Any]:
    """The ``explanations.json`` document (module docstring), made JSON-safe (NaN as null)."""
    identity = subject.identity
    document = {
        "format": EXPLANATIONS_FORMAT,
        "source": subject.source,
        "path": subject.chosen,
        "latent_mode": latent_mode if subject.chosen == "latent" else None,
        "fmr": float(fmr),
        "tau": float(errors.tau),
        "verification": subject.report.verification.to_record(),
        "counts": {
            "false_non_match": int(errors.false_non_match.shape[0]),
            "false_match": int(errors.false_match.shape[0]),
            "explained": len(explanations),
        },
        "attribution": error_attribution(explanations, attributes if attributes is not None else list(subject.schema.names)),
        "pairs": [
            {**e.to_record(), "identities": [int(identity[e.first]), int(identity[e.second])]} for e in explanations
        ],
    }
    estimated = getattr(subject.probe, "estimated", None) if subject.probe is not None else None
    if estimated:
        document["estimated"] = dict(estimated)  # attribute -> the estimator that read it off the images
    return json_safe(document)


def _counterfactual_value(explanation: PairExplanation, name: str, labels, schema) -> torch.Tensor:
    """The value of attribute ``name`` that the second sample took in ``explanation``'s counterfactual (shape (1,)).

    The same edit :func:`frx_plugin.counterfactual.explain_errors` made: for a false non-match the
    first sample's value ("align"); for a false match the second's value moved away from the first's.
    """
    first, second = torch.tensor([explanation.first]), torch.tensor([explanation.second])
    return pair_values(schema[name], labels[name], first, second, explanation.kind)[0]


def _figure(probe, generator, explanations, labels, schema, count: int, path: Path) -> Path:
    """``counterfactuals.png``: both faces of a few error pairs and the second face changed along its top attributes."""
    from frx_plugin.figures import plot_counterfactuals

    rows = []
    for e in figure_pairs(explanations, count):
        second = torch.tensor([e.second])
        changed = []
        for name, delta in [(k, d) for k, d in e.ranked() if d != 0.0][:FIGURE_CHANGES]:
            image = generator.counterfactual(second, name, _counterfactual_value(e, name, labels, schema))[0]
            changed.append((name, image, e.score + delta))
        rows.append({"kind": e.kind, "tau": e.tau, "score": e.score, "first": probe.images(torch.tensor([e.first]))[0],
                     "second": probe.images(second)[0], "changed": changed})
    return plot_counterfactuals(rows, path, title="frx explain: each error pair (faces A, B), then B with one attribute changed; "
                                             "framed green where that change alone flips the decision at τ")
