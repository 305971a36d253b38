"""``frx explain --decoder`` on real-format photographs (an image folder with a CSV, written here): the decoded
counterfactual path, ``counterfactuals.png`` with the real faces, their decodings and the edited decodings, and
``report.html`` showing it (every figure loads in headless chromium). Before: image folders had the latent path only,
and no counterfactual face."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from frx_plugin.commands.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))
from test_probe_estimator import write_face_folder

KINDS = "square:binary;coin:binary;shade:continuous"


@pytest.fixture(scope="module")
def explained(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain-decoded")
    folder = write_face_folder(root, n_ids=20, per_id=4, size=64)
    out = root / "out"
    mp = pytest.MonkeyPatch()
    mp.setenv("FRX_CACHE_DIR", str(root / "cache"))
    try:
        code = main(["explain", "--backbone", "resnet-small", "--probe", f"image-folder:{folder},align=none,size=64,kinds={KINDS}",
                     "--decoder", "conv", "--decoder-steps", "3", "--fmr", "0.01", "--max-pairs", "3", "--out", str(out), "--quiet"])
    finally:
        mp.undo()
    assert code == 0
    return out


def test_explain_with_a_decoder_takes_the_decoded_path_and_writes_the_strips(explained):
    document = json.loads((explained / "explanations.json").read_text())
    assert document["path"] == "decoded" and document["latent_mode"] is None
    assert document["counts"]["explained"] == len(document["pairs"]) > 0
    for pair in document["pairs"]:
        assert set(pair["delta"]) == {"square", "coin", "shade"}
    from matplotlib.image import imread

    figure = imread(explained / "counterfactuals.png")
    assert figure.shape[0] > 200 and figure.shape[1] > 4 * 150  # rows of A, B, G(A), G(B) and the edited G(B)


def test_the_report_shows_the_decoded_counterfactual_faces(explained, tmp_path):
    from frx_plugin.commands.report import write_report

    page = write_report(explained, out=tmp_path / "report.html")
    text = page.read_text(encoding="utf-8")
    assert "decoded counterfactuals" in text and "Counterfactual faces" in text and "their decodings G(A) and G(B)" in text
    if shutil.which("chromium") is not None:
        from benchmarks.report_screenshot import browser_check

        passed, message = browser_check(page, tmp_path / "shot.png")
        assert passed, message


@pytest.mark.parametrize("args, message", [
    (["--path", "decoded"], "--path decoded needs --decoder SPEC"),
    (["--decoder-steps", "5"], "--decoder-steps goes with --decoder SPEC"),
    (["--decoder", "conv", "--decoder-folds", "1"], "--decoder-folds must be at least 2"),
])
def test_bad_decoder_options_are_one_line_naming_the_option(args, message, tmp_path, capsys):
    code = main(["explain", "--backbone", "resnet-small", "--probe", "synthetic,n_identities=4,images_per_identity=2,size=64",
                 "--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err, err
