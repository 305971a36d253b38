"""The loop object of the core, as a plain PyTorch loop uses it, and the options every loop takes."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import frx_plugin
from frx_plugin.config import AnalysisConfig
from frx_plugin.counterfactual.budget import counterfactual_budget
from frx_plugin.loop import AnalysisLoop
from frx_plugin.passes import plan_pass, run_pass
from frx_plugin.plugins import get_plugin_manager
from frx_plugin.sinks import scalar_metrics
from tests.lightning_helpers import make_probe, make_train_loader
from tests.records import assert_same_measures


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4),
                                            torch.nn.Flatten(), torch.nn.Linear(128, 16))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)


class Recorder:
    """A sink that keeps what it is given."""

    every_rank = False

    def __init__(self) -> None:
        self.scalars: list[tuple[int, dict[str, float]]] = []

    def log_scalars(self, scalars, step):
        self.scalars.append((step, dict(scalars)))


CONFIG = AnalysisConfig(n_bootstrap=10, counterfactuals="off")


def _train(frx_loop: AnalysisLoop | None, steps: int = 9) -> Net:
    """A plain PyTorch loop: the model, a linear classifier, SGD; frx called after each optimizer step."""
    model, head = Net(), torch.nn.Linear(16, 12)
    optimizer = torch.optim.SGD(list(model.parameters()) + list(head.parameters()), lr=0.05, momentum=0.9)
    step = 0
    for epoch in range(3):
        for images, labels in make_train_loader():
            loss = F.cross_entropy(head(model(images)), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if frx_loop is not None:
                frx_loop.step(model, step, epoch=epoch)
            if step == steps:
                return model
    return model


def test_a_plain_pytorch_loop_gets_passes_on_its_schedule_history_and_sinks(tmp_path):
    probe, sink = make_probe(), Recorder()
    frx_loop = AnalysisLoop(probe, out_dir=tmp_path / "frx", config=CONFIG, transform="unit", every_n_steps=3, sinks=[sink])
    model = _train(frx_loop)
    records = json.loads((tmp_path / "frx" / "history.json").read_text())["records"]
    assert [r["global_step"] for r in records] == [3, 6, 9]
    assert [step for step, _ in sink.scalars] == [3, 6, 9]
    # the last pass measured the model as it is at step 9: the same record as the core's pass on it
    report = run_pass(model, probe, plan_pass(probe, CONFIG, on_error="raise"), announce=False).report
    report.epoch, report.global_step = records[-1]["epoch"], 9
    assert_same_measures(records[-1], json.loads(json.dumps(report.to_record())))
    shown = {k: v for k, v in sink.scalars[-1][1].items() if k.startswith("frx/leakage/")}
    assert shown == pytest.approx({k: v for k, v in scalar_metrics(report).items() if k.startswith("frx/leakage/")}, abs=1e-9)


def test_a_resumed_plain_loop_continues_its_history_from_the_state_dict(tmp_path):
    probe = make_probe()
    first = AnalysisLoop(probe, out_dir=tmp_path / "frx", config=CONFIG, transform="unit", every_n_steps=3)
    _train(first, steps=6)
    state = first.state_dict()
    assert state["global_step"] == 6
    second = AnalysisLoop(probe, out_dir=tmp_path / "frx", config=CONFIG, transform="unit", every_n_steps=3)
    second.load_state_dict(state)
    _train(second, steps=9)  # the same run from step 1 again: its passes at 3 and 6 replace the checkpoint's
    records = json.loads((tmp_path / "frx" / "history.json").read_text())["records"]
    assert [(r["run"], r["global_step"]) for r in records] == [(0, 3), (0, 6), (0, 9)]


def test_no_input_range_is_assumed_silently(tmp_path):
    frx_loop = AnalysisLoop(make_probe(), out_dir=tmp_path / "frx", config=CONFIG, every_n_steps=3)
    with pytest.warns(UserWarning, match="pass transform=") as caught:
        _train(frx_loop, steps=6)
    assert sum("pass transform=" in str(w.message) for w in caught) == 1  # once per run, not per pass


def test_frx_analysis_completed_fires_after_the_pass_is_written(tmp_path, fresh_plugins):
    from frx_insightface.arcface_torch import ArcFaceTorchCallback

    seen = []

    class Reader:
        @frx_plugin.hookimpl
        def frx_analysis_completed(self, report, context):
            path = tmp_path / "frx" / "history.json"
            records = json.loads(path.read_text())["records"] if path.exists() else []
            seen.append((context["global_step"], [r["global_step"] for r in records]))

    get_plugin_manager().register(Reader())
    callback = ArcFaceTorchCallback(make_probe(), out_dir=tmp_path / "frx", every_n_steps=3, config=CONFIG, transform="unit")
    model = Net()
    callback.run(3, model)
    callback.run(6, model)
    assert seen == [(3, [3]), (6, [3, 6])]  # the hook reads the history with its own pass in it


def test_every_analysis_option_reaches_both_callbacks(tmp_path):
    from lightning.pytorch import Trainer

    from frx_insightface.arcface_torch import ArcFaceTorchCallback
    from frx_lightning import AttributeRecoveryCallback
    from tests.lightning_helpers import TinyFaceModule

    probe = make_probe()
    callback = AttributeRecoveryCallback(probe, out_dir=tmp_path / "a", head="logistic", C=0.5, n_bootstrap=0,
                                         counterfactuals="off", differential_bands=3, min_class_samples=5)
    assert callback.config == AnalysisConfig(head="logistic", C=0.5, n_bootstrap=0, counterfactuals="off",
                                             differential_bands=3, min_class_samples=5)
    Trainer(max_epochs=1, accelerator="cpu", devices=1, callbacks=[callback], logger=False, enable_progress_bar=False,
            enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path).fit(TinyFaceModule(), make_train_loader())
    assert callback.last_report.head == "logistic"
    given = AttributeRecoveryCallback(probe, out_dir=tmp_path / "b", config=AnalysisConfig(head="logistic"), n_bootstrap=0)
    assert given.config.head == "logistic" and given.config.n_bootstrap == 0
    arcface = ArcFaceTorchCallback(probe, out_dir=tmp_path / "c", head="logistic", significance_samples=7)
    assert arcface.config.head == "logistic" and arcface.config.significance_samples == 7
    with pytest.raises(TypeError, match=r"unknown analysis option\(s\) \['heads'\]"):
        AttributeRecoveryCallback(probe, heads="logistic")
    with pytest.raises(ValueError, match="head must be one of"):
        ArcFaceTorchCallback(probe, out_dir=tmp_path / "d", head="svm")


@pytest.mark.parametrize("n_probe, n_attributes", [(240, 19), (1600, 19), (2100, 19), (100, 19), (5000, 3), (60, 6)])
def test_the_scaled_budget_makes_at_most_as_many_changed_faces_as_the_probe_has(n_probe, n_attributes):
    budget = counterfactual_budget(n_probe, n_attributes, "exact")
    faces = n_attributes * (budget.rows + 2 * budget.error_pairs)  # one face per row, at most one per error of each kind
    assert budget.scaled and faces <= max(0.75 * n_probe, n_attributes * 4)
    assert 2 <= budget.rows <= 64 and 1 <= budget.error_pairs <= 8
    if n_probe >= 2100:  # a large probe set gets the full default study
        assert (budget.rows, budget.error_pairs) == (64, 8)


def test_the_budget_leaves_given_sizes_and_the_latent_path_alone():
    assert counterfactual_budget(240, 19, "latent").to_record() == {"rows": 64, "error_pairs": 8, "scaled": False}
    assert counterfactual_budget(240, 19, "exact", 100, 20).to_record() == {"rows": 100, "error_pairs": 20, "scaled": False}
    assert counterfactual_budget(240, 19, "exact", significance_samples=100).rows == 100


def test_a_pass_on_the_exact_path_makes_the_scaled_study_and_records_it():
    from frx_plugin.synthetic import SyntheticProbeSet

    probe = SyntheticProbeSet(n_identities=15, images_per_identity=4, seed=0, size=32, first_identity=700)  # 60 images
    report = run_pass(Net(), probe, plan_pass(probe, AnalysisConfig(n_bootstrap=0, fmr=0.05), on_error="raise")).report
    assert report.counterfactuals == "exact"
    expected = counterfactual_budget(60, len(probe.schema), "exact").to_record()
    assert report.counterfactual_budget == expected and report.to_record()["counterfactual_budget"] == expected
