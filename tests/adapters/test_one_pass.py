"""One pass for every training loop: the same model and probe set give the same record through the
Lightning callback, the arcface_torch callback, the core's run_pass and ``frx analyze --backbone``."""

from __future__ import annotations

import json

import pytest
from lightning.pytorch import Trainer

from frx_insightface.arcface_torch import ArcFaceTorchCallback
from frx_lightning import AttributeRecoveryCallback
from frx_plugin.passes import AnalysisConfig, plan_pass, run_pass
from frx_plugin.synthetic import SyntheticProbeSet
from tests.lightning_helpers import TinyFaceModule, make_train_loader
from tests.records import assert_same_measures

OPTIONS: dict = {}  # the defaults, which frx analyze uses too
PROBE = dict(n_identities=20, images_per_identity=4, seed=3, size=32, first_identity=9_000)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model trained one epoch with the Lightning callback, and the record of that callback's last pass."""
    out = tmp_path_factory.mktemp("one-pass")
    probe = SyntheticProbeSet(**PROBE)
    callback = AttributeRecoveryCallback(probe, out_dir=out / "lightning", n_bootstrap=20, **OPTIONS)
    model = TinyFaceModule()
    trainer = Trainer(max_epochs=1, accelerator="cpu", devices=1, callbacks=[callback], logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, default_root_dir=out)
    trainer.fit(model, make_train_loader())
    record = json.loads((out / "lightning" / "history.json").read_text())["records"][-1]
    return probe, model, record, trainer.global_step, out


def test_lightning_and_arcface_torch_and_run_pass_give_the_same_record(trained):
    probe, model, lightning_record, step, out = trained
    assert lightning_record["counterfactuals"] == "exact" and lightning_record["significance"]
    arcface = ArcFaceTorchCallback(probe, out_dir=out / "arcface", config=AnalysisConfig(n_bootstrap=20), transform="unit", **OPTIONS)
    arcface.run(step, model, epoch=1)
    arcface_record = json.loads((out / "arcface" / "history.json").read_text())["records"][-1]
    assert_same_measures(lightning_record, arcface_record)
    plan = plan_pass(probe, AnalysisConfig(n_bootstrap=20), **OPTIONS)
    report = run_pass(model, probe, plan).report
    report.epoch, report.global_step = 1, step
    assert_same_measures(lightning_record, json.loads(json.dumps(report.to_record())))


def test_frx_analyze_on_the_same_model_gives_the_same_record(trained, tmp_path, capsys):
    from safetensors.torch import save_file

    from frx_plugin.commands.cli import main

    probe, model, lightning_record, _, _ = trained
    weights = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    probe_spec = "synthetic," + ",".join(f"{k}={v}" for k, v in PROBE.items())
    code = main(["analyze", "--backbone", f"torch:tests.lightning_helpers:TinyFaceModule@{weights}", "--probe", probe_spec,
                 "--bootstrap", "20", "--counterfactuals", "auto",
                 "--out", str(tmp_path / "analyze")])
    assert code == 0, capsys.readouterr().err
    document = json.loads((tmp_path / "analyze" / "analysis.json").read_text())
    record = {k: document[k] for k in lightning_record if k in document}
    record["epoch"], record["global_step"] = lightning_record["epoch"], lightning_record["global_step"]
    assert_same_measures(lightning_record, record)


def test_a_second_lightning_run_on_the_same_out_dir_continues_the_history(trained, tmp_path):
    probe, _, _, _, out = trained
    before = json.loads((out / "lightning" / "history.json").read_text())["records"]
    callback = AttributeRecoveryCallback(probe, out_dir=out / "lightning", n_bootstrap=0, counterfactuals="off")
    trainer = Trainer(max_epochs=1, accelerator="cpu", devices=1, callbacks=[callback], logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    with pytest.warns(UserWarning, match="continuing the history in .*history.json: 2 pass"):
        trainer.fit(TinyFaceModule(), make_train_loader())
    records = json.loads((out / "lightning" / "history.json").read_text())["records"]
    assert records[: len(before)] == before  # kept exactly as written
    assert [(r["run"], r["epoch"], r["pass_index"]) for r in records] == [(0, 0, 0), (0, 1, 1), (1, 0, 2), (1, 1, 3)]
