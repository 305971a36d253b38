"""An attribute with a class of fewer than ``min_class_samples`` labelled samples is reported with a reason and a
warning, not as a number among the others: in memory, streamed, in a pass and on the command line."""

from __future__ import annotations

import json
import math

import pytest
import torch

from frx_plugin.attributes import Attribute, AttributeSchema
from frx_plugin.commands.cli import main
from frx_plugin.embedding_set import write_embedding_set
from frx_plugin.leakage import analyze_embeddings
from frx_plugin.leakage.streaming import analyze_stream
from frx_plugin.passes import AnalysisConfig, PassPlan, run_pass
from frx_plugin.probe import TensorProbeSet

SCHEMA = AttributeSchema([
    Attribute("rare", "binary", classes=("absent", "present")),  # 8 positives among 587 faces
    Attribute("glasses", "binary"),
    Attribute("hair", "categorical", classes=("dark", "fair", "red")),
    Attribute("age", "continuous"),
])
REASON = "too few samples of class 'present' (8 < 20) for a stable AUROC"


def _world(n_identities=118, seed=0):
    """587 faces (4 or 5 per identity); ``rare`` is positive on 8 of them, with a planted signal (so its AUROC is a number)."""
    g = torch.Generator().manual_seed(seed)
    per = torch.tensor([4 if i < 3 else 5 for i in range(n_identities)])
    identity = torch.repeat_interleave(torch.arange(n_identities), per)
    n = identity.numel()
    assert n == 587
    rare = torch.zeros(n, dtype=torch.int64)
    rare[torch.randperm(n, generator=g)[:8]] = 1
    labels = {
        "rare": rare,
        "glasses": torch.randint(0, 2, (n,), generator=g),
        "hair": torch.randint(0, 3, (n_identities,), generator=g)[identity],
        "age": torch.randn(n_identities, generator=g)[identity],
    }
    z = torch.randn(n, 12, generator=g)
    z[:, 0] += 2.0 * labels["rare"]
    z[:, 1] += 1.5 * labels["glasses"]
    z[:, 2] += labels["hair"].float()
    z[:, 3] += labels["age"]
    return torch.nn.functional.normalize(z, dim=1), identity, labels


def _check(report, reference):
    """``report`` (default minimum) has ``rare`` NaN with the reason and a warning; every other entry as ``reference`` (off)."""
    rare = report["rare"]
    assert rare.reason == REASON
    assert math.isnan(rare.value) and math.isnan(rare.leakage) and math.isnan(rare.low) and math.isnan(rare.extra["balanced_accuracy"])
    assert rare.n == 587
    assert f"attribute 'rare': {REASON}" in report.warnings
    assert reference["rare"].reason is None and reference["rare"].value > 0.7  # a number once the minimum is off
    for name in ("glasses", "hair", "age"):
        assert report[name].reason is None
        assert report[name].value == reference[name].value and report[name].low == reference[name].low, name
    record = report["rare"].to_record()  # written as null, as other undefined attributes are
    assert record["value"] is None and record["leakage"] is None and record["reason"] == REASON


@pytest.mark.parametrize("head", ["ridge", "logistic"])
def test_in_memory_analysis(head):
    z, identity, labels = _world()
    report = analyze_embeddings(z, identity, labels, SCHEMA, n_bootstrap=20, head=head)
    _check(report, analyze_embeddings(z, identity, labels, SCHEMA, n_bootstrap=20, head=head, min_class_samples=0))
    # the minimum is a parameter: 8 positives are enough at 8, not at 9
    assert analyze_embeddings(z, identity, labels, SCHEMA, n_bootstrap=0, head=head, min_class_samples=8)["rare"].reason is None
    assert "(8 < 9)" in analyze_embeddings(z, identity, labels, SCHEMA, n_bootstrap=0, head=head, min_class_samples=9)["rare"].reason


def test_streaming_analysis():
    z, identity, labels = _world()

    def chunks():
        return [(z[i:i + 100], identity[i:i + 100], {k: v[i:i + 100] for k, v in labels.items()}) for i in range(0, 587, 100)]

    _check(analyze_stream(chunks, identity, SCHEMA, n_bootstrap=20),
           analyze_stream(chunks, identity, SCHEMA, n_bootstrap=20, min_class_samples=0))
    with pytest.raises(ValueError, match="min_class_samples must be a non-negative integer, got -1"):
        analyze_stream(chunks, identity, SCHEMA, min_class_samples=-1)


def test_a_pass_follows_the_config():
    z, identity, labels = _world()
    probe = TensorProbeSet(z.view(587, 3, 2, 2), SCHEMA, identity, labels, source="planted faces")
    model = torch.nn.Flatten().eval()

    def report(config):
        return run_pass(model, probe, PassPlan(config=config, counterfactuals="latent", on_error="raise")).report

    assert AnalysisConfig().min_class_samples == 20
    default, off = report(AnalysisConfig(n_bootstrap=20)), report(AnalysisConfig(n_bootstrap=20, min_class_samples=0))
    _check(default, off)
    # the latent counterfactuals still shrink by the held-out AUROC that is not reported: the same significance
    assert default.unreported == {"rare": off["rare"].value}
    assert default.significance == off.significance and default.significance["rare"]["value"] > 0
    with pytest.raises(ValueError, match="min_class_samples must be a non-negative integer"):
        AnalysisConfig(min_class_samples=2.5)


def test_frx_analyze_reports_the_reason(tmp_path, capsys):
    z, identity, labels = _world()
    path = write_embedding_set(tmp_path / "rare.safetensors", z, identity, labels, SCHEMA)
    assert main(["analyze", "--embeddings", str(path), "--out", str(tmp_path / "a"), "--bootstrap", "20"]) == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith("rare "))
    assert "nan" in row and f"({REASON})" in row
    written = json.loads((tmp_path / "a" / "analysis.json").read_text())
    entry = next(e for e in written["attributes"] if e["name"] == "rare")
    assert entry["value"] is None and entry["leakage"] is None and entry["reason"] == REASON
    assert f"attribute 'rare': {REASON}" in written["warnings"]
    assert written["options"]["min_class_samples"] == 20
    assert main(["analyze", "--embeddings", str(path), "--out", str(tmp_path / "b"), "--bootstrap", "20", "--min-class-samples", "5",
                 "--format", "json"]) == 0
    capsys.readouterr()
    written = json.loads((tmp_path / "b" / "analysis.json").read_text())
    entry = next(e for e in written["attributes"] if e["name"] == "rare")
    assert entry["reason"] is None and entry["value"] > 0.7 and written["options"]["min_class_samples"] == 5
    assert main(["analyze", "--embeddings", str(path), "--out", str(tmp_path / "c"), "--min-class-samples", "-3"]) == 2
    assert "error: min_class_samples must be a non-negative integer, got -3" in capsys.readouterr().err
