"""Whose buffers a pass embeds with: rank 0's (the model the loops save) on every rank, each rank's own put back."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from frx_plugin.collectives import SingleProcess
from frx_plugin.model import ModelAdapter, saved_rank_buffers
from frx_plugin.passes import run_pass
from tests.ddp_buffers_script import BatchNormNet, make_plan, make_probe
from tests.ddp_launch import run_two_ranks
from tests.records import assert_same_measures

SCRIPT = Path(__file__).parents[1] / "ddp_buffers_script.py"


def _single_process_record(state: dict) -> dict:
    model = BatchNormNet()
    model.load_state_dict(state)
    probe = make_probe()
    result = run_pass(ModelAdapter(model, transform="unit"), probe, make_plan(probe), SingleProcess())
    return json.loads(json.dumps(result.report.to_record()))


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("rank_buffers")
    run_two_ranks(SCRIPT, str(out))
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]
    return ranks, json.loads((out / "records.json").read_text())


def test_a_pass_under_ddp_with_drifted_buffers_measures_rank_0s_model(two_ranks):
    (zero, one), records = two_ranks
    # the setting: equal weights (DDP averaged the gradients), BatchNorm statistics apart
    weights = [k for k in zero["state"] if k not in zero["before"]]
    assert weights and all(torch.equal(zero["state"][k], one["state"][k]) for k in weights)
    assert not torch.equal(zero["before"]["features.running_var"], one["before"]["features.running_var"])
    reference = _single_process_record(zero["state"])
    # the record of the two-process pass is that of rank 0's model, embedded by one process (both passes)
    for record in records:
        assert_same_measures(reference, record, tol=1e-6)
    # and rank 1's model reads other numbers: the comparison above could fail
    other = _single_process_record(one["state"])
    gaps = [abs(a["value"] - b["value"]) for a, b in zip(reference["attributes"], other["attributes"]) if a["value"] is not None]
    assert max(gaps) > 1e-3


def test_each_rank_gets_its_own_buffers_back_bitwise(two_ranks):
    (zero, one), _ = two_ranks
    for rank in (zero, one):
        for after in rank["after"]:
            assert set(after) == set(rank["before"])
            for name, value in rank["before"].items():
                assert after[name].dtype == value.dtype and torch.equal(after[name], value), name
    assert zero["before"]["features.num_batches_tracked"].dtype == torch.int64


def test_the_drift_is_said_once_on_rank_0_naming_the_buffer_and_the_rank_used(two_ranks):
    (zero, one), _ = two_ranks
    assert one["warned"] == []
    assert len(zero["warned"]) == 1, zero["warned"]  # two passes, one warning
    message = zero["warned"][0]
    assert "buffers differ" in message and "rank 0's buffers on every rank" in message
    assert "broadcast_buffers=False" in message
    assert any(f"'{name}'" in message for name in ("trunk.1.running_mean", "trunk.1.running_var", "features.running_mean",
                                                     "features.running_var"))


def test_one_process_changes_nothing_and_says_nothing():
    model = BatchNormNet()
    model.train()
    model(torch.rand(8, 3, 32, 32))  # running statistics that are not the initial ones
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with saved_rank_buffers(model, SingleProcess(), warn=lambda message: pytest.fail(message)):
            assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
        probe = make_probe()
        result = run_pass(ModelAdapter(model, transform="unit"), probe, make_plan(probe), SingleProcess())
    assert result.report is not None
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
