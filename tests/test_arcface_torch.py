"""The arcface_torch callback in a real 2-process torch.distributed (gloo) loop, against a single process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from frx_insightface.arcface_torch import ArcFaceTorchCallback
from tests.ddp_launch import run_two_ranks
from tests.lightning_helpers import make_probe
from tests.tensorboard_helpers import summary_tags

SCRIPT = Path(__file__).with_name("arcface_torch_script.py")


def test_two_ranks_equal_one_process_and_write_history_and_scalars(tmp_path):
    env = dict(os.environ, WORLD_SIZE="1", RANK="0", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "one")], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_two_ranks(SCRIPT, str(tmp_path / "two"), timeout=300)
    one = json.loads((tmp_path / "one" / "frx" / "history.json").read_text())["records"]
    two = json.loads((tmp_path / "two" / "frx" / "history.json").read_text())["records"]
    # 240 training images: 15 steps in one process, 7 per rank in two; a pass every 5 steps
    assert [r["global_step"] for r in one] == [0, 5, 10, 15, 20, 25]
    assert [r["global_step"] for r in two] == [0, 5, 10]
    # the pass at step 0 sees the same (untrained) model everywhere: the two runs must agree
    first_one, first_two = one[0], two[0]
    assert first_one["n_samples"] == first_two["n_samples"] == 75  # every probe sample once, none twice
    assert first_two["verification"] == first_one["verification"]
    for a, b in zip(first_one["attributes"], first_two["attributes"]):
        for key in ("value", "low", "high"):
            assert (a[key] is None and b[key] is None) or b[key] == pytest.approx(a[key], abs=1e-6), (a["name"], key)
    # the scalars reached the SummaryWriter under the Lightning adapter's names, at each pass's step
    tags = summary_tags(tmp_path / "two" / "tb", kind="scalar")
    assert tags["frx/leakage/skin_tone"] == [0, 5, 10]
    assert "frx/verification/tar_at_fmr_0.001" in tags


def test_bad_arguments_are_rejected_at_once():
    with pytest.raises(ValueError, match="every_n_steps must be a positive integer"):
        ArcFaceTorchCallback(make_probe(), every_n_steps=0)
    with pytest.raises(TypeError, match="writer must have add_scalar"):
        ArcFaceTorchCallback(make_probe(), writer=object())
