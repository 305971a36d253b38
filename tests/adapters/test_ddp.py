import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ddp_launch import HANG_LIMIT_S

SCRIPT = Path(__file__).with_name("ddp_callback_script.py")


def _run(out: Path, devices: int) -> list[dict]:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(out), str(devices)], capture_output=True, text=True, timeout=HANG_LIMIT_S
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "history.json").read_text())["records"]


def test_two_process_ddp_pass_equals_single_process(tmp_path):
    single = _run(tmp_path / "one", 1)
    double = _run(tmp_path / "two", 2)
    assert [r["epoch"] for r in double] == [0, 1]
    # the pass before training sees the same model on every rank: it must equal the single-process pass,
    # with all 119 samples counted once (the shards are disjoint; the gather's padding is dropped)
    before_1, before_2 = single[0], double[0]
    assert before_2["n_samples"] == before_1["n_samples"] == 119
    assert before_2["verification"] == before_1["verification"]
    for a, b in zip(before_1["attributes"], before_2["attributes"]):
        assert a["name"] == b["name"]
        for key in ("value", "low", "high", "leakage"):
            if a[key] is None:
                assert b[key] is None
            else:
                assert b[key] == pytest.approx(a[key], abs=1e-6), (a["name"], key)
    _assert_same_decoded_counterfactuals(before_1, before_2)
    _assert_same_recovery(before_1["recovery"], before_2["recovery"])
    latent_1 = json.loads((tmp_path / "one" / "latent" / "history.json").read_text())["records"][0]
    latent_2 = json.loads((tmp_path / "two" / "latent" / "history.json").read_text())["records"][0]
    _assert_same_counterfactuals(latent_1, latent_2, "latent")


def _assert_same_decoded_counterfactuals(one: dict, two: dict) -> None:
    """Decoded counterfactuals rendered by each fold's decoder on the process that trained it equal the single-process
    ones up to those decoders' float rounding (see _assert_same_recovery): S_k to 2%; the errors are the same (the
    embeddings are), and the attributes that flip them too (their δ move by the rounding only)."""
    assert one["counterfactuals"] == two["counterfactuals"] == "decoded"
    assert one["counterfactual_budget"] == two["counterfactual_budget"]
    assert set(one["significance"]) == set(two["significance"]) and one["significance"]
    for name, estimate in one["significance"].items():
        for key, value in estimate.items():
            assert two["significance"][name][key] == pytest.approx(value, rel=0.02), (name, key)
    assert one["error_attribution"] == two["error_attribution"]


def _assert_same_recovery(one: dict, two: dict) -> None:
    """The two-stage pass with the folds' decoders trained on two processes equals the single-process one."""
    assert one["errors"] == two["errors"] == []
    for name, a in one["attributes"].items():
        b = two["attributes"][name]
        # the direct path reads the same gathered embeddings: equal
        assert b["direct"]["value"] == pytest.approx(a["direct"]["value"], abs=1e-9), name
        # each fold's decoder is trained by one process from the same seed, initial weights and data as in the
        # single process; only float rounding differs (the processes run convolutions with other thread counts),
        # so a reading near a class boundary may flip: agreement to 0.02, where a decoder trained from other
        # initial weights lands 0.4 away
        assert b["two_stage"]["value"] == pytest.approx(a["two_stage"]["value"], abs=0.02), name
        assert b["spread"] == pytest.approx(a["spread"], abs=0.02), name
    for fold in ("0", "1"):
        assert two["decoder_fits"][fold]["pixel_loss_start"] == pytest.approx(one["decoder_fits"][fold]["pixel_loss_start"], rel=1e-5)
        assert two["decoder_fits"][fold]["pixel_loss_end"] == pytest.approx(one["decoder_fits"][fold]["pixel_loss_end"], rel=1e-2)
    assert two["identity_similarity"]["decoded"] == pytest.approx(one["identity_similarity"]["decoded"], abs=1e-3)


def _assert_same_counterfactuals(one: dict, two: dict, path: str) -> None:
    """Significance and error attribution of a 2-process pass equal the single-process ones."""
    assert one["counterfactuals"] == two["counterfactuals"] == path
    assert set(one["significance"]) == set(two["significance"]) and one["significance"]
    for name, estimate in one["significance"].items():
        for key, value in estimate.items():
            other = two["significance"][name][key]
            assert (value is None and other is None) or other == pytest.approx(value, abs=1e-6), (name, key)
    assert one["error_attribution"] == two["error_attribution"]


def test_a_failure_on_one_process_skips_the_pass_on_every_process_without_hanging(tmp_path):
    # the second process's embeddings turn NaN in training epoch 1 (the pass after it is epoch 2): before its
    # first collective every process learns of it, so that pass is skipped everywhere, training finishes and
    # the earlier passes stay
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "run"), "2", "nan-on-rank-1"], capture_output=True, text=True, timeout=HANG_LIMIT_S
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = json.loads((tmp_path / "run" / "history.json").read_text())["records"]
    assert [r["epoch"] for r in records] == [0, 1]
    assert "failed on another process" in proc.stderr or "NaN" in proc.stderr


def test_a_two_stage_setup_error_stops_both_processes_without_a_hang(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "run"), "2", "estimator-32"], capture_output=True, text=True, timeout=HANG_LIMIT_S
    )
    assert proc.returncode != 0
    assert "estimator 'pixels' takes (3, 32, 32)" in proc.stderr


def _demo(out: Path, devices: int) -> list[dict]:
    proc = subprocess.run(
        [sys.executable, "-m", "frx_plugin", "demo", "--out", str(out), "--devices", str(devices), "--epochs", "1",
         "--identities", "40", "--images-per-identity", "4", "--probe-identities", "23", "--probe-images-per-identity", "3",
         "--n-bootstrap", "30"],
        capture_output=True, text=True, timeout=HANG_LIMIT_S,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "history.json").read_text())["records"]


def test_frx_demo_with_two_devices_counts_every_probe_sample_once(tmp_path):
    one = _demo(tmp_path / "one", 1)[0]
    two = _demo(tmp_path / "two", 2)[0]  # 69 probe samples: the two shards differ in size
    assert one["epoch"] == two["epoch"] == 0
    assert two["n_samples"] == 69
    assert two["verification"] == one["verification"]
    for a, b in zip(one["attributes"], two["attributes"]):
        for key in ("value", "low", "high", "leakage", "leakage_low", "leakage_high"):
            assert (a[key] is None and b[key] is None) or b[key] == pytest.approx(a[key], abs=1e-6), (a["name"], key)
        for key, value in a["extra"].items():
            assert b["extra"][key] == pytest.approx(value, abs=1e-6) if value is not None else b["extra"][key] is None
    # exact counterfactuals: each rank renders and embeds its share of the changed faces
    _assert_same_counterfactuals(one, two, "exact")
