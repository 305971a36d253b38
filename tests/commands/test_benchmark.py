"""``frx benchmark``: verification intervals against the unweighted definitions, and a real run of the command."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from safetensors.torch import save_file

from frx_plugin.commands.benchmark import verification_with_intervals, weighted_eer, weighted_threshold
from frx_plugin.commands.cli import main
from frx_plugin.embedding_set import write_embedding_set
from frx_plugin.model import embed_probe_set
from frx_plugin.models import ResidualFaceNet, save_backbone
from frx_plugin.passes import AnalysisConfig, analyze_probe
from frx_plugin.synthetic import SyntheticProbeSet
from frx_plugin.verification import equal_error_rate, listed_pair_verification, pair_scores, verification


def _clusters(identities: int, per: int, dim: int = 8, spread: float = 0.8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(identities, dim, generator=g)
    z = centres.repeat_interleave(per, 0) + spread * torch.randn(identities * per, dim, generator=g)
    return torch.nn.functional.normalize(z, dim=1), torch.arange(identities).repeat_interleave(per)


def test_point_estimates_are_the_unweighted_definitions():
    z, identity = _clusters(60, 5)
    result = verification_with_intervals(z, identity, (1e-2, 1e-3), n_bootstrap=50, seed=1)
    for fmr in (1e-2, 1e-3):
        assert result["tar"][f"{fmr:g}"]["value"] == verification(z, identity, fmr).tar
        entry = result["tar"][f"{fmr:g}"]
        assert entry["low"] <= entry["value"] <= entry["high"] and entry["high"] - entry["low"] > 0
    genuine, impostor = pair_scores(z, identity)
    assert result["eer"]["value"] == pytest.approx(equal_error_rate(genuine, impostor)[0], abs=1e-12)
    assert result["eer"]["low"] <= result["eer"]["value"] <= result["eer"]["high"]
    assert (result["genuine_pairs"], result["impostor_pairs"]) == (genuine.numel(), impostor.numel())
    # too few impostor pairs for an FMR: NaN with the reason, never a made-up value
    small = verification_with_intervals(z[:20], identity[:20], (1e-3,), n_bootstrap=5)
    assert math.isnan(small["tar"]["0.001"]["value"]) and "too few for FMR 0.001" in small["notes"]["0.001"]
    # listed pairs: the verification file's own pairs
    pairs = torch.tensor([[0, 1], [5, 6], [0, 5], [1, 10], [2, 3], [11, 20]] * 40)
    listed = verification_with_intervals(z, identity, (1e-2,), n_bootstrap=20, pairs=pairs)
    assert listed["tar"]["0.01"]["value"] == listed_pair_verification(z, identity, pairs, 1e-2).tar


def test_weighted_threshold_and_eer_equal_the_repeated_scores():
    g = torch.Generator().manual_seed(3)
    impostor = torch.rand(500, generator=g, dtype=torch.float64)
    genuine_scores = torch.rand(200, generator=g, dtype=torch.float64) * 0.5 + 0.5
    weights = torch.poisson(torch.ones(700, dtype=torch.float64), generator=g)
    w_imp, w_gen = weights[:500], weights[500:]
    order = torch.argsort(impostor, descending=True)
    repeated = impostor.repeat_interleave(w_imp.long())
    for fmr in (0.01, 0.05, 0.2):
        k = int(math.floor(fmr * repeated.numel()))
        assert weighted_threshold(impostor[order], w_imp[order], fmr) == float(torch.sort(repeated, descending=True).values[k])
    scores = torch.cat([impostor, genuine_scores])
    is_genuine = torch.cat([torch.zeros(500, dtype=torch.bool), torch.ones(200, dtype=torch.bool)])
    eer = weighted_eer(scores, is_genuine, torch.cat([w_imp, w_gen]))
    reference = equal_error_rate(genuine_scores.repeat_interleave(w_gen.long()), repeated)[0]
    assert eer == pytest.approx(reference, abs=1e-12)


def broken():
    """A 'backbone' whose output is an image, not embeddings (frx_embed refuses it)."""
    return torch.nn.Conv2d(3, 4, 3)


def test_benchmark_command_compares_backbones_and_keeps_going(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path.parent)
    probe_options = {"n_identities": 24, "images_per_identity": 4, "size": 32}
    torch.manual_seed(0)
    first = ResidualFaceNet(embedding_dim=16, widths=(8, 8, 8, 8), input_size=32).eval()
    save_backbone(first, tmp_path / "a" / "backbone.safetensors", probe=probe_options)
    second = ResidualFaceNet(embedding_dim=24, input_size=32).eval()  # another size D: fine, each is analysed alone
    save_file({k: v.contiguous() for k, v in second.state_dict().items()}, str(tmp_path / "b.safetensors"))
    save_file({k: v.contiguous() for k, v in broken().state_dict().items()}, str(tmp_path / "broken.safetensors"))
    probe = SyntheticProbeSet(**probe_options)
    z_first = embed_probe_set(first, probe)
    write_embedding_set(tmp_path / "pre.safetensors", z_first, probe.identity, probe.labels, probe.schema)
    out = tmp_path / "bench"
    specs = [f"frx:{tmp_path / 'a'}", f"torch:frx_plugin.models:ResidualFaceNet@{tmp_path / 'b.safetensors'},embedding_dim=24,input_size=32",
             f"torch:tests.commands.test_benchmark:broken@{tmp_path / 'broken.safetensors'}"]
    args = ["benchmark", *[a for s in specs for a in ("--backbone", s)], "--embeddings", str(tmp_path / "pre.safetensors"),
            "--bootstrap", "20", "--no-report", "--out", str(out)]
    code = main(args)
    printed = capsys.readouterr()
    assert code == 1, printed.err  # one backbone failed: the exit code says so, the others are there
    document = json.loads((out / "benchmark.json").read_text())
    rows = {row["spec"]: row for row in document["backbones"]}
    assert [row["spec"] for row in document["backbones"]] == specs + [f"embeddings:{tmp_path / 'pre.safetensors'}"]
    assert "TypeError" in rows[specs[2]]["error"] and "expected embeddings (B, D)" in rows[specs[2]]["error"]
    assert rows[specs[0]]["embedding_dim"] == 16 and rows[specs[1]]["embedding_dim"] == 24
    assert rows[specs[0]]["parameters"] == sum(p.numel() for p in first.parameters())
    assert document["n_samples"] == 96 and document["probe"] == "synthetic probe set"  # the probe set the frx: backbone names
    # the first backbone's numbers are frx's analysis of its embeddings; the embedding file of the same embeddings agrees
    reference = analyze_probe(z_first, probe, AnalysisConfig(n_bootstrap=20))
    for row in (rows[specs[0]], rows[f"embeddings:{tmp_path / 'pre.safetensors'}"]):
        got = {a["name"]: a["value"] for a in row["analysis"]["attributes"]}
        for item in reference.leakage:
            if math.isnan(item.value):  # undefined (e.g. a class of too few samples): null in the file, with its reason
                assert got[item.name] is None, item.name
            else:
                assert got[item.name] == pytest.approx(item.value, abs=1e-4), item.name
        assert sum(not math.isnan(item.value) for item in reference.leakage) >= 5
        assert row["verification"]["tar"]["0.001"]["value"] == pytest.approx(verification(z_first, probe.identity, 1e-3).tar, abs=1e-6)
    assert rows[specs[0]]["analysis"]["counterfactuals"] == "exact"  # the synthetic generator re-renders the probe faces
    assert set(rows[specs[0]]["analysis"]["significance"]) == set(probe.schema.names)
    assert rows[f"embeddings:{tmp_path / 'pre.safetensors'}"]["analysis"]["counterfactuals"] == "latent"
    table = list(csv.DictReader((out / "benchmark.csv").open()))
    assert [r["spec"] for r in table] == [row["spec"] for row in document["backbones"]]
    assert float(table[0]["leakage.skin_tone"]) == pytest.approx(reference["skin_tone"].leakage, abs=1e-4)
    # the demographic differentials side by side: each row's are those of its embeddings at its τ
    expected = analyze_probe(z_first, probe, AnalysisConfig(n_bootstrap=20, differentials=True)).differentials
    for row in (rows[specs[0]], rows[f"embeddings:{tmp_path / 'pre.safetensors'}"]):
        assert row["analysis"]["differentials"] == json.loads(json.dumps(expected))
    assert {f"garbe.{n}" for n in probe.schema.names} <= set(table[0]) and "fnmr_ratio.glasses" in table[0]
    markdown = (out / "benchmark.md").read_text()
    assert "## Demographic differentials: GARBE per attribute" in markdown
    from frx_plugin.commands.report import write_report

    page = write_report(out, out=tmp_path / "page.html").read_text(encoding="utf-8")
    assert "<h3>Demographic differentials per attribute</h3>" in page and f"demographic differentials of {specs[0]}" in page
    assert 'id="benchmark-differentials-0"' in page
    assert f"| `{specs[1]}` | 24 |" in markdown and "failed: TypeError" in markdown and "## Leakage ℓ per attribute" in markdown
    # the folder now holds a run: refused without --overwrite, nothing touched
    before = (out / "benchmark.json").read_bytes()
    assert main(args) == 2
    assert "already holds files (benchmark.csv, benchmark.json, benchmark.md)" in capsys.readouterr().err
    assert (out / "benchmark.json").read_bytes() == before
    # an unknown kind is refused before anything runs, listing the installed kinds
    assert main(["benchmark", "--backbone", "resnet:x", "--out", str(tmp_path / "other")]) == 2
    assert "unknown kind 'resnet'; the installed plugins offer: frx (" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()
