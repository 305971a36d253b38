"""The Lightning callback in the ways Lightning users train: monitor frx like any metric, passes on steps,
the history beside the logs, bf16-true, and no passes in a smoke test."""

from __future__ import annotations

import json

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from frx_lightning import AttributeRecoveryCallback
from tests.lightning_helpers import TinyFaceModule, make_probe, make_train_loader

FAST = dict(n_bootstrap=0, counterfactuals="off", transform="unit")


def _trainer(tmp_path, callbacks, max_epochs, **kw):
    kw.setdefault("logger", False)
    kw.setdefault("enable_checkpointing", False)
    return Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, callbacks=callbacks, enable_progress_bar=False,
                   enable_model_summary=False, default_root_dir=tmp_path, **kw)


def _history(folder):
    return json.loads((folder / "history.json").read_text())["records"]


def _leakage(record, name):
    return next(a["leakage"] for a in record["attributes"] if a["name"] == name)


def test_early_stopping_and_model_checkpoint_monitor_leakage(tmp_path):
    """The user story: keep the checkpoint where the leakage of an attribute is lowest, and stop when it stops falling."""
    monitor = "frx/leakage/tone"
    stopper = EarlyStopping(monitor=monitor, mode="min", patience=1, check_on_train_epoch_end=True)
    keeper = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor=monitor, mode="min", save_top_k=1)
    frx = AttributeRecoveryCallback(make_probe(), out_dir=tmp_path / "frx", **FAST)
    trainer = _trainer(tmp_path, [stopper, frx, keeper], 6, enable_checkpointing=True)  # EarlyStopping listed first
    trainer.fit(TinyFaceModule(), make_train_loader())
    records = _history(tmp_path / "frx")
    values = [_leakage(r, "tone") for r in records if r["epoch"] >= 1]  # the epoch-end passes the callbacks saw
    assert monitor in trainer.callback_metrics
    assert float(trainer.callback_metrics[monitor]) == pytest.approx(values[-1])
    assert float(keeper.best_model_score) == pytest.approx(min(values))
    assert (tmp_path / "ckpt").exists() and keeper.best_model_path
    assert float(stopper.best_score) == pytest.approx(min(values))
    # it stopped where patience ran out: one epoch without a new minimum after the best
    best = values.index(min(values))
    assert len(values) == min(6, best + 2)


def test_passes_every_n_train_steps_land_on_those_steps(tmp_path):
    frx = AttributeRecoveryCallback(make_probe(), out_dir=tmp_path / "frx", every_n_train_steps=4, **FAST)
    _trainer(tmp_path, [frx], 2).fit(TinyFaceModule(), make_train_loader())  # 6 steps an epoch
    records = _history(tmp_path / "frx")
    # before training, steps 4 and 8, and the epoch ends at 6 and 12 (12 is a multiple of 4: one pass there)
    assert [(r["global_step"], r["epoch"]) for r in records] == [(0, 0), (4, 0), (6, 1), (8, 1), (12, 2)]
    assert [r["pass_index"] for r in records] == [0, 1, 2, 3, 4]


def test_the_history_goes_beside_the_logs_by_default(tmp_path):
    logger = CSVLogger(tmp_path, name="logs")
    frx = AttributeRecoveryCallback(make_probe(), **FAST)
    _trainer(tmp_path, [frx], 1, logger=logger).fit(TinyFaceModule(), make_train_loader())
    assert frx.out_dir == tmp_path / "logs" / "version_0" / "frx"
    assert [r["epoch"] for r in _history(frx.out_dir)] == [0, 1]
    alone = AttributeRecoveryCallback(make_probe(), **FAST)
    _trainer(tmp_path / "plain", [alone], 1).fit(TinyFaceModule(), make_train_loader())
    assert alone.out_dir == tmp_path / "plain" / "frx" and (alone.out_dir / "history.json").exists()


def test_fast_dev_run_gets_no_pass(tmp_path):
    frx = AttributeRecoveryCallback(make_probe(), out_dir=tmp_path / "frx", **FAST)
    _trainer(tmp_path, [frx], 1, fast_dev_run=True).fit(TinyFaceModule(), make_train_loader())
    assert frx.history.records == [] and not (tmp_path / "frx").exists()


def test_bf16_true_writes_a_history(tmp_path):
    frx = AttributeRecoveryCallback(make_probe(), out_dir=tmp_path / "frx", **FAST)
    model = TinyFaceModule()
    _trainer(tmp_path, [frx], 1, precision="bf16-true").fit(model, make_train_loader())
    assert next(model.parameters()).dtype == torch.bfloat16
    assert frx.failures == []
    records = _history(tmp_path / "frx")
    assert [r["epoch"] for r in records] == [0, 1]
    assert all(a["value"] is not None for a in records[-1]["attributes"])
