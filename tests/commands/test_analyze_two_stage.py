"""``frx analyze --two-stage`` on an image folder with a CSV (written here): R_k per attribute with intervals, the
trained estimator's ceiling, a planted attribute readable and a noise label unreadable, decoded faces, and the
report showing them (every figure loads in headless chromium). Before: no --two-stage; the two-stage path found
no estimator for an image folder."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from frx_plugin.commands.cli import main
from frx_plugin.commands.report import write_report

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))
from test_probe_estimator import write_face_folder

KINDS = "square:binary;coin:binary;shade:continuous"


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    root = tmp_path_factory.mktemp("two-stage")
    folder = write_face_folder(root, n_ids=20, per_id=4, size=64)
    out = root / "out"
    mp = pytest.MonkeyPatch()
    mp.setenv("FRX_CACHE_DIR", str(root / "cache"))
    try:
        code = main(["analyze", "--backbone", "resnet-small", "--probe", f"image-folder:{folder},align=none,size=64,kinds={KINDS}",
                     "--two-stage", "--decoder-steps", "3", "--bootstrap", "20", "--folds", "2", "--counterfactuals", "auto",
                     "--fmr", "0.01", "--out", str(out), "--quiet"])
    finally:
        mp.undo()
    assert code == 0
    return out


def test_analysis_json_has_r_k_with_intervals_ceiling_and_readability(analysed):
    document = json.loads((analysed / "analysis.json").read_text())
    recovery = document["recovery"]
    assert recovery["estimator"] == "trained" and recovery["decoder"] == "conv"
    entries = recovery["attributes"]
    assert set(entries) == {"square", "coin", "shade"}
    for entry in entries.values():
        for path in ("two_stage", "direct"):
            assert entry[path]["low"] <= entry[path]["value"] <= entry[path]["high"]
    assert entries["square"]["readable"] and entries["square"]["real_images"] > 0.8
    assert entries["shade"]["readable"] and entries["shade"]["estimator_accuracy"]["r2"] > 0.8
    assert not entries["coin"]["readable"] and "cannot read" in entries["coin"]["reason"]
    assert (analysed / "decoded.png").is_file() and (analysed / "recovery.png").is_file()


def test_counterfactuals_auto_with_two_stages_on_an_image_folder_are_decoded(analysed):
    document = json.loads((analysed / "analysis.json").read_text())
    assert document["counterfactuals"] == "decoded" and document["counterfactual_budget"]["scaled"]
    assert set(document["significance"]) == {"square", "coin", "shade"}
    assert (analysed / "counterfactuals.png").read_bytes()[:4] == b"\x89PNG"


def test_report_shows_the_two_stage_values_and_the_decoded_faces(analysed, tmp_path):
    page = write_report(analysed, out=tmp_path / "report.html")
    text = page.read_text(encoding="utf-8")
    assert 'id="recovery-table"' in text and "ceiling: estimator R_k on real faces" in text
    assert "Decoded faces" in text
    assert "Identity significance (decoded counterfactuals)" in text and "their decodings G(A) and G(B)" in text
    if shutil.which("chromium") is not None:
        from benchmarks.report_screenshot import browser_check

        passed, message = browser_check(page, tmp_path / "shot.png")
        assert passed, message


@pytest.mark.parametrize("args, option", [
    (["--decoder-steps", "5"], "--decoder-steps goes with --two-stage"),
    (["--two-stage", "--decoder-folds", "1"], "--decoder-folds must be at least 2"),
    (["--two-stage", "--decoder", "nope"], "unknown kind 'nope'"),
    (["--two-stage", "--estimator", "trained,n_folds=3"], "'trained' takes no argument or options"),
])
def test_bad_two_stage_options_are_one_line_naming_the_option(args, option, tmp_path, capsys):
    code = main(["analyze", "--backbone", "resnet-small", "--probe", "synthetic,n_identities=4,images_per_identity=2,size=64",
                 "--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and option in err and "\n" not in err, err


def test_two_stage_with_an_embedding_file_names_the_option(tmp_path, capsys):
    code = main(["analyze", "--embeddings", str(tmp_path / "none.safetensors"), "--two-stage", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--two-stage goes with --backbone" in err and "\n" not in err, err


def test_benchmark_two_stage_tables_and_report(tmp_path, monkeypatch, capsys):
    """frx benchmark --two-stage: each backbone's R_k beside the direct one, the ceiling, in the JSON, CSV, Markdown and report."""
    import csv

    monkeypatch.setenv("FRX_CACHE_DIR", str(tmp_path / "cache"))
    folder = write_face_folder(tmp_path, n_ids=16, per_id=4, size=64)
    out = tmp_path / "bench"
    code = main(["benchmark", "--backbone", "resnet-small", "--backbone", "mobilefacenet-like", "--probe",
                 f"image-folder:{folder},align=none,size=64,kinds={KINDS}", "--two-stage", "--decoder-steps", "2",
                 "--bootstrap", "10", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    document = json.loads((out / "benchmark.json").read_text())
    for row in document["backbones"]:
        recovery = row["analysis"]["recovery"]
        assert recovery["estimator"] == "trained" and set(recovery["attributes"]) == {"square", "coin", "shade"}
    ceilings = [row["analysis"]["recovery"]["attributes"]["square"]["real_images"] for row in document["backbones"]]
    assert ceilings[0] == ceilings[1] > 0.8  # one estimator for every backbone
    rows = list(csv.DictReader((out / "benchmark.csv").open()))
    assert float(rows[0]["ceiling.square"]) == pytest.approx(ceilings[0])
    assert rows[1]["recovery.coin"] != "" and "recovery_direct.shade" in rows[1]
    markdown = (out / "benchmark.md").read_text()
    assert "## Two-stage recovery significance R_k per attribute" in markdown and "(unreadable)" in markdown
    assert "## The estimator's ceiling per attribute" in markdown
    html = (out / "report.html").read_text()
    assert 'id="benchmark-recovery-0"' in html and 'id="benchmark-recovery-1"' in html
