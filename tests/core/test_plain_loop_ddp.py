"""The loop object in a plain PyTorch DDP loop and an Accelerate loop, 2 real processes (gloo), against one process."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from frx_plugin.passes import plan_pass, run_pass
from frx_plugin.synthetic import SyntheticProbeSet
from tests.core.plain_loop_script import CONFIG, PROBE, model_and_head
from tests.ddp_launch import HANG_LIMIT_S, run_two_ranks
from tests.records import assert_same_measures

SCRIPT = Path(__file__).with_name("plain_loop_script.py")


def _records(out: Path) -> list[dict]:
    return json.loads((out / "frx" / "history.json").read_text())["records"]


def _single_process_record(out: Path, step: int, epoch) -> dict:
    """The core's pass, in this one process, on the weights rank 0 saved at the last pass."""
    model, _ = model_and_head()
    model.load_state_dict(load_file(str(out / "model.safetensors")))
    probe = SyntheticProbeSet(**PROBE)
    report = run_pass(model, probe, plan_pass(probe, CONFIG, on_error="raise"), announce=False).report
    report.epoch, report.global_step = epoch, step
    return json.loads(json.dumps(report.to_record()))


@pytest.mark.parametrize("kind", ["torch", pytest.param("accelerate", marks=pytest.mark.skipif(
    importlib.util.find_spec("accelerate") is None, reason="accelerate is not installed"))])
def test_two_processes_measure_the_saved_model_as_one_process_does(tmp_path, kind):
    run_two_ranks(SCRIPT, str(tmp_path), kind, timeout=HANG_LIMIT_S)
    assert (tmp_path / "world1.txt").read_text().startswith("2 TorchDistributed")
    records = _records(tmp_path)
    assert [r["global_step"] for r in records] == [0, 3, 6]
    assert all(r["n_samples"] == 63 for r in records)  # every probe image once, none twice (63 over 2 processes)
    assert records[-1]["counterfactuals"] == "exact" and records[-1]["significance"]
    single = _single_process_record(tmp_path, 6, records[-1]["epoch"])
    assert records[-1]["warnings"] == single["warnings"]  # a part skipped on one side says why
    assert_same_measures(records[-1], single)
    # the untrained model's pass: the same record as one process gives
    model, _ = model_and_head()
    probe = SyntheticProbeSet(**PROBE)
    first = run_pass(model, probe, plan_pass(probe, CONFIG, on_error="raise"), announce=False).report
    first.epoch, first.global_step = 0, 0
    assert_same_measures(records[0], json.loads(json.dumps(first.to_record())))
    assert torch.isfinite(torch.tensor([a["value"] for a in records[-1]["attributes"] if a["value"] is not None])).all()
