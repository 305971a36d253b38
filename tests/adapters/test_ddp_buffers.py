"""Lightning DDP with BatchNorm: the pass after training records the model global zero saves, and says once that the ranks differed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from frx_plugin.model import ModelAdapter
from frx_plugin.passes import AnalysisConfig, PassPlan, run_pass
from tests.adapters.ddp_buffers_callback_script import BatchNormFaceModule
from tests.ddp_launch import HANG_LIMIT_S
from tests.lightning_helpers import make_probe
from tests.records import assert_same_measures

SCRIPT = Path(__file__).with_name("ddp_buffers_callback_script.py")


def test_a_lightning_ddp_pass_after_training_measures_global_zeros_model(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=HANG_LIMIT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = json.loads((tmp_path / "history.json").read_text())["records"]
    assert [r["epoch"] for r in records] == [0, 1]
    model = BatchNormFaceModule()
    model.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    probe = make_probe(n_identities=17, per_identity=7, seed=3)
    result = run_pass(ModelAdapter(model, transform="unit"), probe, PassPlan(config=AnalysisConfig(n_bootstrap=0)))
    reference = json.loads(json.dumps(result.report.to_record()))
    for key in ("epoch", "global_step"):
        reference[key] = records[-1][key]
    assert_same_measures(reference, records[-1], tol=1e-6)
    # said once (the pass before training found the ranks equal), by global zero
    said = [line for line in proc.stderr.splitlines() if "buffers differ" in line]
    assert len(said) == 1, proc.stderr[-3000:]
    assert "'net.1.running_" in said[0] and "rank 0's buffers on every rank" in said[0]
