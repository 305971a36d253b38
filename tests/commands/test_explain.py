"""`frx explain`: explanations.json and counterfactuals.png, checked against independent recomputation."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from frx_plugin.commands.cli import main
from frx_plugin.embedding_set import write_embedding_set
from frx_plugin.model import embed_probe_set
from frx_plugin.models import ResidualFaceNet, load_backbone, save_backbone
from frx_plugin.synthetic import SyntheticProbeSet
from frx_plugin.verification import verification

PROBE = {"n_identities": 30, "images_per_identity": 4, "seed": 0, "size": 64, "first_identity": 1_000_000}


@pytest.fixture
def frx(capsys):
    """``frx ARGS...`` in this process: its exit code and what it printed, as a finished process has them."""

    def run(*args):
        code = main(list(args))
        printed = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=printed.out, stderr=printed.err)

    return run


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo")
    torch.manual_seed(0)
    save_backbone(ResidualFaceNet(32, input_size=64).eval(), folder / "backbone.safetensors", probe=PROBE)
    return folder


def test_explain_writes_both_files_and_every_entry_checks_out(demo_dir, tmp_path, frx):
    proc = frx("explain", "--demo-dir", str(demo_dir), "--out", str(tmp_path), "--fmr", "0.01", "--max-pairs", "5")
    assert proc.returncode == 0, proc.stderr
    assert "exact counterfactuals" in proc.stdout and "counterfactuals.png" in proc.stdout
    document = json.loads((tmp_path / "explanations.json").read_text())
    model, _ = load_backbone(demo_dir / "backbone.safetensors")
    probe = SyntheticProbeSet(**PROBE)
    z = embed_probe_set(model, probe)
    reference = verification(z, probe.identity, fmr=0.01)
    assert document["format"] == "frx.explanations/1" and document["path"] == "exact"
    assert document["tau"] == pytest.approx(reference.threshold, abs=1e-6)
    kinds = {p["kind"] for p in document["pairs"]}
    assert kinds == {"false_non_match", "false_match"} and document["counts"]["explained"] == len(document["pairs"]) <= 10
    zn = z.double()
    for entry in document["pairs"]:
        a, b = entry["pair"]
        same = bool(probe.identity[a] == probe.identity[b])
        assert entry["identities"] == [int(probe.identity[a]), int(probe.identity[b])]
        assert float(zn[a] @ zn[b]) == pytest.approx(entry["score"], abs=1e-5)
        if entry["kind"] == "false_non_match":
            assert same and entry["score"] <= document["tau"]
            flips = {k for k, d in entry["delta"].items() if d is not None and entry["score"] + d > document["tau"]}
        else:
            assert not same and entry["score"] > document["tau"]
            flips = {k for k, d in entry["delta"].items() if d is not None and entry["score"] + d <= document["tau"]}
        assert set(entry["deciding"]) == flips
    # one exact δ recomputed independently: render the changed face, embed it, compare
    entry = next(p for p in document["pairs"] if p["kind"] == "false_non_match")
    a, b = entry["pair"]
    with torch.no_grad():
        changed = torch.nn.functional.normalize(model(probe.world.counterfactual([b], "yaw", probe.labels["yaw"][[a]])), dim=1)
    assert entry["delta"]["yaw"] == pytest.approx(float(zn[a] @ changed[0].double()) - entry["score"], abs=1e-5)
    # and one false match: the second face's yaw moves one standard deviation further from the first's
    entry = next(p for p in document["pairs"] if p["kind"] == "false_match")
    a, b = entry["pair"]
    yaw = probe.labels["yaw"].double()
    step = float(yaw.std()) * (1.0 if yaw[b] >= yaw[a] else -1.0)
    with torch.no_grad():
        changed = torch.nn.functional.normalize(model(probe.world.counterfactual([b], "yaw", (yaw[[b]] + step).float())), dim=1)
    assert entry["delta"]["yaw"] == pytest.approx(float(zn[a] @ changed[0].double()) - entry["score"], abs=1e-5)
    # the shares are those of the entries
    shares = document["attribution"]["all"]
    assert shares["yaw"] == pytest.approx(sum("yaw" in p["deciding"] for p in document["pairs"]) / len(document["pairs"]))
    import matplotlib.image

    image = matplotlib.image.imread(tmp_path / "counterfactuals.png")
    assert image.shape[0] > 200 and image.shape[1] > 400


def test_explain_an_embedding_file_takes_the_latent_path(demo_dir, tmp_path, frx):
    model, _ = load_backbone(demo_dir / "backbone.safetensors")
    probe = SyntheticProbeSet(**PROBE)
    path = write_embedding_set(tmp_path / "set.safetensors", embed_probe_set(model, probe), probe.identity, probe.labels, probe.schema)
    proc = frx("explain", "--embeddings", str(path), "--out", str(tmp_path / "o"), "--fmr", "0.01", "--max-pairs", "3")
    assert proc.returncode == 0, proc.stderr
    document = json.loads((tmp_path / "o" / "explanations.json").read_text())
    assert document["path"] == "latent" and document["pairs"]
    assert not (tmp_path / "o" / "counterfactuals.png").exists()
    assert "needs a generator" in proc.stdout
    for entry in document["pairs"]:
        assert all(d is None or math.isfinite(d) for d in entry["delta"].values())


def test_explain_errors_are_named(demo_dir, tmp_path, frx):
    bad = frx("explain", "--demo-dir", str(demo_dir), "--out", str(tmp_path), "--fmr", "0")
    assert bad.returncode == 2 and "fmr must be a number in (0, 1)" in bad.stderr
    few = frx("explain", "--demo-dir", str(demo_dir), "--out", str(tmp_path), "--fmr", "1e-6")
    assert few.returncode == 2 and "at least 1,000,000 are needed" in few.stderr
    model, _ = load_backbone(demo_dir / "backbone.safetensors")
    probe = SyntheticProbeSet(**PROBE)
    path = write_embedding_set(tmp_path / "set.safetensors", embed_probe_set(model, probe), probe.identity, probe.labels, probe.schema)
    exact = frx("explain", "--embeddings", str(path), "--out", str(tmp_path), "--path", "exact")
    assert exact.returncode == 2 and "frx_register_generators" in exact.stderr
    assert "Traceback" not in bad.stderr + few.stderr + exact.stderr


def test_explain_without_a_backbone_or_a_training_adapter_says_what_to_do(tmp_path, frx, fresh_plugins, monkeypatch):
    monkeypatch.setenv("FRX_DISABLE_PLUGIN_AUTOLOAD", "1")  # no Lightning adapter: nothing can train the demo
    proc = frx("explain", "--demo-dir", str(tmp_path / "none"), "--out", str(tmp_path))
    assert proc.returncode == 2
    assert "no trained backbone at" in proc.stderr and "backbone.safetensors" in proc.stderr and "[lightning]" in proc.stderr


def test_explain_from_python_with_a_model_and_a_probe_set_of_your_own(demo_dir, tmp_path):
    from frx_plugin.commands.explain import explain
    from frx_plugin.counterfactual import CounterfactualError
    from frx_plugin.probe import TensorProbeSet

    model, _ = load_backbone(demo_dir / "backbone.safetensors")
    synthetic = SyntheticProbeSet(**PROBE)
    probe = TensorProbeSet(synthetic.images(torch.arange(len(synthetic))), synthetic.schema, synthetic.identity, synthetic.labels,
                           source="my faces")  # no generator renders it
    messages = []
    document = explain(model, probe, out_dir=tmp_path, fmr=0.01, max_pairs=2, latent_mode="least_norm", say=messages.append)
    assert document["path"] == "latent" and document["latent_mode"] == "least_norm" and document["source"].startswith("my faces")
    assert any("latent path" in m and "my faces" in m for m in messages)
    assert document["files"] == [str(tmp_path / "explanations.json")] and not (tmp_path / "counterfactuals.png").exists()
    assert json.loads((tmp_path / "explanations.json").read_text())["pairs"] == document["pairs"]
    assert 0 < len(document["pairs"]) <= 4
    with pytest.raises(CounterfactualError, match="frx_register_generators"):
        explain(model, probe, out_dir=tmp_path, fmr=0.01, path="exact")
    for bad, option in (({"max_pairs": 0}, "max_pairs"), ({"figure_pairs": -1}, "figure_pairs"),
                        ({"latent_mode": "nearest"}, "latent_mode"), ({"path": "guess"}, "path"), ({"fmr": 1.0}, "fmr")):
        with pytest.raises(ValueError, match=option):
            explain(model, probe, out_dir=tmp_path, **bad)
    with pytest.raises(ValueError, match="both a model and a probe set"):
        explain(model, out_dir=tmp_path)
