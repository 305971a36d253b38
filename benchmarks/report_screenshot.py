"""Open ``report.html`` in headless Chromium: take a screenshot and check that every figure decoded.

    python benchmarks/report_screenshot.py [--folder DIR] [--out report.png]

Runs :func:`frx_plugin.commands.report.write_report` on ``--folder`` (a folder of frx outputs; default:
a small demo folder built here in a few seconds from synthetic embeddings — a training history,
an analysis, explanations and a benchmark), then Debian's ``chromium`` twice, with no network:
``--screenshot`` (1280×4000) and ``--dump-dom``. The page's inline script sets
``<body data-figures="loaded/total">`` once it has loaded; the check passes when that reads
``N/N`` with N the number of ``<img>`` tags in the page. Exit status 0 when it passes, 1 when a
figure did not load, 2 when chromium is missing or fails.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=5000")


# ------------------------------------------------------------------------------------ a demo folder


def synthetic_embeddings(seed: int = 0, strength: float = 1.0, identities: int = 40, per_identity: int = 5, dim: int = 16):
    """Embeddings (N, D) with identities and three attributes they encode ``strength``-fold, and the schema.

    The attributes carry the names of the synthetic world's (:mod:`frx_plugin.synthetic`), so that
    its renderer can draw illustrative faces for the figures of the demo folder.
    """
    import torch

    from frx_plugin.attributes import Attribute, AttributeSchema

    schema = AttributeSchema([
        Attribute("smile", "binary", group="nuisance"),
        Attribute("hair_colour", "categorical", classes=("black", "blond", "red"), group="identity"),
        Attribute("yaw", "continuous", group="nuisance"),
    ])
    generator = torch.Generator().manual_seed(seed)
    n = identities * per_identity
    identity = torch.arange(identities).repeat_interleave(per_identity)
    hair_of_identity = torch.randint(0, 3, (identities,), generator=generator)
    labels = {
        "smile": torch.randint(0, 2, (n,), generator=generator),
        "hair_colour": hair_of_identity[identity],
        "yaw": torch.randn(n, generator=generator),
    }
    labels["smile"][::17] = -1  # a few missing labels, as real probe sets have
    centres = torch.randn(identities, dim, generator=generator)
    hair_directions = torch.randn(3, dim, generator=generator)
    smile_direction, yaw_direction = torch.randn(2, dim, generator=generator)
    z = (centres[identity] + 0.5 * strength * hair_directions[labels["hair_colour"]]
         + 0.4 * strength * labels["smile"].clamp_min(0).float()[:, None] * smile_direction
         + 0.3 * strength * labels["yaw"][:, None] * yaw_direction + 0.6 * torch.randn(n, dim, generator=generator))
    return torch.nn.functional.normalize(z, dim=1), identity, labels, schema


def analysis_pass(epoch: int, strength: float, counterfactuals: bool = True):
    """One real analysis pass (leakage, verification, latent significance and error attribution) on synthetic embeddings."""
    import torch

    from frx_plugin.counterfactual import counterfactual_heads, latent_embedder, latent_model
    from frx_plugin.counterfactual.measures import counterfactual_measures
    from frx_plugin.passes import AnalysisConfig, analyze_probe
    from frx_plugin.probe import ProbeSet

    z, identity, labels, schema = synthetic_embeddings(seed=epoch, strength=strength)
    probe = ProbeSet(schema, identity, labels, source="synthetic embeddings")
    config = AnalysisConfig(n_bootstrap=20, fmr=0.01, n_folds=4)
    report = analyze_probe(z, probe, config)
    if counterfactuals:
        directions, bias, held_out = counterfactual_heads(z, identity, labels, schema)
        heads = latent_model(z, labels, schema, directions, bias, held_out=held_out)
        counterfactual_measures(z, probe, report, config, latent_embedder(heads, z, labels), path="latent",
                                significance_samples=48, max_error_pairs=4)
    report.epoch, report.global_step = epoch, 25 * epoch
    report.tensors = {k: v for k, v in report.tensors.items() if isinstance(v, torch.Tensor)}
    return report


def example_recovery(schema) -> dict[str, Any]:
    """A ``recovery`` entry in the layout of :meth:`frx_plugin.two_stage.TwoStagePass.measures` (one value missing)."""
    attributes = {}
    for i, attribute in enumerate(schema):
        two_stage = {"value": 0.2 + 0.2 * i, "low": 0.1 + 0.2 * i, "high": 0.3 + 0.2 * i}
        attributes[attribute.name] = {"kind": attribute.kind, "group": attribute.group, "two_stage": two_stage,
                                      "direct": {"value": 0.3 + 0.2 * i, "low": None, "high": None},
                                      "real_images": 0.9 if i else None, "readable": bool(i)}
    return {"decoder": "conditional-vae", "estimator": "synthetic-oracle", "samples": 4, "folds": 2, "steps": 10,
            "identity_similarity": {"decoded": 0.41, "genuine": 0.62, "impostor": 0.02}, "decoder_fits": {}, "errors": [],
            "spearman_two_stage_vs_direct": 1.0, "attributes": attributes}


def _world():
    from frx_plugin.synthetic import SyntheticFaceWorld

    return SyntheticFaceWorld(4, 4, seed=0, size=48)


def write_history_folder(folder: Path, epochs: int = 3) -> Path:
    """``history.json`` + ``history.safetensors`` of ``epochs`` real passes (the last with a two-stage entry) and ``decoded.png``."""
    import torch

    from frx_plugin.figures import plot_decoded
    from frx_plugin.history import HistoryRecorder

    recorder = None
    for epoch in range(epochs):
        report = analysis_pass(epoch, strength=0.3 + 0.5 * epoch, counterfactuals=epoch > 0)
        if recorder is None:
            _, _, _, schema = synthetic_embeddings()
            recorder = HistoryRecorder(folder, schema)
        if epoch == epochs - 1:
            report.recovery = example_recovery(recorder.schema)
        recorder.add(report.to_record(), report.tensors)
    recorder.write()
    # illustrative faces: two held-out faces beside three other images of their identity (standing in for decoder samples)
    world = _world()
    faces = world.render(torch.arange(8)).view(2, 4, 3, world.size, world.size)
    plot_decoded(faces[:, 0], faces[:, 1:], folder / "decoded.png")
    return folder


def write_analysis_file(folder: Path) -> Path:
    """``analysis.json`` through :func:`frx_plugin.commands.analyze.analyze` on an embedding-set file (kept in ``folder``)."""
    from frx_plugin.commands.analyze import analyze as analyze_file
    from frx_plugin.embedding_set import write_embedding_set
    from frx_plugin.passes import AnalysisConfig

    z, identity, labels, schema = synthetic_embeddings(seed=7, strength=1.2)
    embeddings = write_embedding_set(folder / "embeddings.safetensors", z, identity, labels, schema)
    analyze_file(embeddings, config=AnalysisConfig(n_bootstrap=20, fmr=0.01, n_folds=4, differentials=True, differential_curves=True,
                                                   differential_min_pairs=20, differential_min_identities=5), out_dir=folder)
    return folder / "analysis.json"


def write_explanations_file(folder: Path) -> Path:
    """``explanations.json`` through :func:`frx_plugin.commands.explain.explain` on an embedding-set file, then a ``counterfactuals.png``.

    (An embedding file takes the latent path, which draws no faces; the figure is drawn with
    :func:`frx_plugin.figures.plot_counterfactuals` from faces of the synthetic world, changed along each
    pair's top-ranked attributes, so that the page has one to embed. The faces illustrate; they are
    not the embedded ones.)
    """
    import torch

    from frx_plugin.commands.explain import explain
    from frx_plugin.embedding_set import write_embedding_set
    from frx_plugin.figures import plot_counterfactuals

    z, identity, labels, schema = synthetic_embeddings(seed=11, strength=0.8)
    embeddings = write_embedding_set(folder / "explained.safetensors", z, identity, labels, schema)
    document = explain(embeddings_file=embeddings, out_dir=folder, fmr=0.01, max_pairs=6, say=lambda message: None)
    world = _world()
    rows = []
    for r, pair in enumerate(document["pairs"][:2]):
        first, second = torch.tensor([8 * r]), torch.tensor([8 * r + 4])
        changed = [(name, world.counterfactual(second, name)[0], pair["score"] + (pair["delta"][name] or 0.0)) for name in pair["ranked"][:2]]
        rows.append({"kind": pair["kind"], "tau": pair["tau"], "score": pair["score"], "first": world.render(first)[0],
                     "second": world.render(second)[0], "changed": changed})
    if rows:
        plot_counterfactuals(rows, folder / "counterfactuals.png")
    return folder / "explanations.json"


def benchmark_document() -> dict[str, Any]:
    """A ``frx.benchmark/1`` document of three backbones: two measured (real analysis records, some values null), one failed."""
    small = analysis_pass(5, strength=1.0).to_record()
    small["attributes"][0]["leakage"] = None  # JSON has no NaN: a value that could not be computed is null
    small["significance"][small["attributes"][1]["name"]] = {"value": None, "low": None, "high": None}
    large = analysis_pass(6, strength=1.6).to_record()
    return {
        "format": "frx.benchmark/1",
        "command": "frx benchmark --backbone synthetic:resnet-small --backbone synthetic:resnet-large --backbone broken:model --out bench",
        "versions": {"frx": "0.1.0", "python": "3.11.2", "torch": "2.4.0+cpu"},
        "machine": "x86_64 Linux, 2 CPU threads, torch threads 2",
        "probe": "synthetic:probe(n_identities=40)",
        "n_samples": 200,
        "n_identities": 40,
        "fmrs": [0.001, 0.0001],
        "n_bootstrap": 20,
        "backbones": [
            {"spec": "synthetic:resnet-small", "embedding_dim": 16, "parameters": None, "embed_seconds_per_image": 0.00125,
             "verification": {"tar": {"0.001": {"value": 0.8125, "low": 0.7531, "high": 0.8702},
                                      "0.0001": {"value": None, "low": None, "high": None}},
                              "eer": {"value": 0.0625, "low": 0.041, "high": 0.0877}},
             "analysis": small, "seconds": 1.5, "error": None},
            {"spec": "synthetic:resnet-large", "embedding_dim": 16, "parameters": 1234567, "embed_seconds_per_image": 0.0042,
             "verification": {"tar": {"0.001": {"value": 0.9375, "low": 0.9012, "high": 0.9633},
                                      "0.0001": {"value": 0.875, "low": 0.8123, "high": 0.9187}},
                              "eer": {"value": 0.025, "low": 0.0125, "high": 0.0411}},
             "analysis": large, "seconds": 2.5, "error": None},
            {"spec": "broken:model", "error": "RuntimeError: the backbone could not be loaded", "seconds": 0.1},
        ],
    }


def build_demo_folder(folder: Path) -> Path:
    """A folder with every kind of frx output, made from synthetic embeddings (a few seconds on a small CPU)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_history_folder(folder)
    write_analysis_file(folder)
    write_explanations_file(folder)
    (folder / "benchmark.json").write_text(json.dumps(benchmark_document(), indent=1, allow_nan=False), encoding="utf-8")
    return folder


# ------------------------------------------------------------------------------------ the browser check


def count_images(dom: str) -> int:
    return len(re.findall(r"<img\b", dom, flags=re.IGNORECASE))


def loaded_figures(dom: str) -> str | None:
    """The ``data-figures`` value the page's script set on ``<body>``, or None when it never ran."""
    match = re.search(r"<body\b[^>]*\bdata-figures=\"([^\"]*)\"", dom, flags=re.IGNORECASE)
    return match.group(1) if match else None


def browser_check(page: Path, screenshot: Path, chromium: str = "chromium", timeout: float = 120.0) -> tuple[bool, str]:
    """(passed, message): open ``page`` in headless chromium, save ``screenshot``, check every ``<img>`` decoded."""
    executable = shutil.which(chromium)
    if executable is None:
        raise FileNotFoundError(f"{chromium} is not installed (apt-get install chromium)")
    url = Path(page).resolve().as_uri()
    screenshot = Path(screenshot).resolve()
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="frx-chromium-") as profile:
        flags = [executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
        shot = subprocess.run([*flags, f"--screenshot={screenshot}", "--window-size=1280,4000", url],
                              capture_output=True, text=True, timeout=timeout)
        if shot.returncode != 0 or not screenshot.is_file():
            raise RuntimeError(f"chromium --screenshot failed (exit {shot.returncode}): {shot.stderr[-2000:]}")
        dump = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=timeout)
    if dump.returncode != 0 or "<body" not in dump.stdout:
        raise RuntimeError(f"chromium --dump-dom failed (exit {dump.returncode}): {dump.stderr[-2000:]}")
    total = count_images(dump.stdout)
    figures = loaded_figures(dump.stdout)
    if figures is None:
        return False, f"the page's script did not set data-figures ({total} <img> tags)"
    passed = figures == f"{total}/{total}" and total > 0
    verdict = "every figure loaded" if passed else "a figure did not load"
    return passed, f"data-figures {figures}, {total} <img> tags: {verdict}; screenshot {screenshot}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", default=None, help="a folder of frx outputs (default: build a small demo folder)")
    parser.add_argument("--out", default="report-screenshot.png", help="the screenshot to write (PNG)")
    parser.add_argument("--chromium", default="chromium", help="the chromium executable")
    args = parser.parse_args()
    from frx_plugin.commands.report import write_report

    with tempfile.TemporaryDirectory(prefix="frx-report-demo-") as scratch:
        folder = Path(args.folder) if args.folder else build_demo_folder(Path(scratch) / "demo")
        # a folder of real outputs keeps the command its files record; the built demo folder has none
        page = write_report(folder, command=None if args.folder else "python " + " ".join(sys.argv))
        print(f"wrote {page}")
        try:
            passed, message = browser_check(page, Path(args.out), args.chromium)
        except (FileNotFoundError, RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"report_screenshot: {exc}", file=sys.stderr)
            return 2
    print(message)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
