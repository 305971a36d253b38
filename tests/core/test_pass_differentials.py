"""Demographic differentials in a pass: the record, the loggers' scalars and the history, equal to a direct call."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch import Trainer

from frx_lightning import AttributeRecoveryCallback
from frx_plugin.differentials import demographic_differentials
from frx_plugin.history import read_history
from frx_plugin.model import embed_probe_set
from frx_plugin.passes import AnalysisConfig, plan_pass, run_pass
from frx_plugin.report import Report
from frx_plugin.sinks import scalar_metrics
from frx_plugin.verification import verification
from tests.lightning_helpers import TinyFaceModule, make_probe, make_train_loader

CONFIG = AnalysisConfig(n_bootstrap=20, differentials=True, differential_min_pairs=5, differential_min_identities=3, fmr=1e-2)


def test_a_pass_records_the_differentials_of_a_direct_call_and_logs_their_summaries():
    probe = make_probe(n_identities=40, per_identity=5)
    model = TinyFaceModule().eval()
    report = run_pass(model, probe, plan_pass(probe, CONFIG, counterfactuals="off", on_error="raise")).report
    z = embed_probe_set(model, probe)
    expected = demographic_differentials(z, probe.identity, probe.labels, probe.schema, verification(z, probe.identity, fmr=1e-2),
                                         n_bootstrap=20, min_pairs=5, min_identities=3).to_record()
    assert report.differentials == expected
    scalars = scalar_metrics(report)
    for item in expected["attributes"]:
        for summary in ("fnmr_ratio", "fmr_ratio", "fdr", "garbe"):
            value = (item[summary] or {}).get("value")
            key = f"frx/differential/{item['name']}/{summary}"
            if value is not None and math.isfinite(value):
                assert scalars[key] == pytest.approx(value)
            else:
                assert key not in scalars
    assert any(k.startswith("frx/differential/") for k in scalars)
    # the record survives the history's round trip
    assert Report.from_record(report.to_record()).differentials == expected


def test_differentials_are_on_by_default_off_when_asked_and_a_bad_option_is_refused():
    probe = make_probe()
    model = TinyFaceModule().eval()
    report = run_pass(model, probe, plan_pass(probe, counterfactuals="off", on_error="raise")).report
    assert report.differentials["attributes"] and any(k.startswith("frx/differential/") for k in scalar_metrics(report))
    off = AnalysisConfig(differentials=False)
    report = run_pass(model, probe, plan_pass(probe, off, counterfactuals="off", on_error="raise")).report
    assert report.differentials is None and not any(k.startswith("frx/differential/") for k in scalar_metrics(report))
    with pytest.raises(ValueError, match="differential_bands must be a positive integer"):
        AnalysisConfig(differential_bands=0)


def test_the_lightning_callback_logs_the_differentials_and_keeps_them_in_the_history(tmp_path):
    probe = make_probe(n_identities=40, per_identity=5)
    callback = AttributeRecoveryCallback(probe, out_dir=tmp_path / "frx", n_bootstrap=10, fmr=1e-2, counterfactuals="off",
                                         on_error="raise")  # differentials are on by default
    trainer = Trainer(max_epochs=1, accelerator="cpu", devices=1, callbacks=[callback], logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(TinyFaceModule(), make_train_loader())
    _, records, _ = read_history(tmp_path / "frx")
    assert all(r["differentials"]["attributes"] for r in records)
    last = callback.last_report.differentials
    logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("frx/differential/")}
    assert logged and logged == pytest.approx(
        {k: v for k, v in scalar_metrics(callback.last_report).items() if k.startswith("frx/differential/")})
    assert last == records[-1]["differentials"]
    assert torch.isfinite(torch.tensor(list(logged.values()))).all()


def test_a_failing_differentials_step_leaves_the_pass_standing_unless_asked_to_raise(monkeypatch):
    import frx_plugin.differentials

    def broken(*args, **kwargs):
        raise RuntimeError("planted failure")

    monkeypatch.setattr(frx_plugin.differentials, "demographic_differentials", broken)
    probe = make_probe(n_identities=40, per_identity=5)
    model = TinyFaceModule().eval()
    result = run_pass(model, probe, plan_pass(probe, CONFIG, counterfactuals="off", on_error="warn"))
    assert result.ok and result.report.leakage and result.report.verification is not None
    assert result.report.differentials is None
    assert any("demographic differentials skipped: RuntimeError: planted failure" in w for w in result.report.warnings)
    with pytest.raises(RuntimeError, match="planted failure"):
        run_pass(model, probe, plan_pass(probe, CONFIG, counterfactuals="off", on_error="raise"))
