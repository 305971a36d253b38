"""Loggers first, files second: a pass whose history cannot be written still reaches the loggers, says so, and is kept.

Both training-loop adapters, in real loops (a Lightning Trainer; an arcface_torch-style loop with a real
``SummaryWriter``). The folder is made unwritable for real (the tests run as root, so no chmod): the
history folder lies under a regular file (``NotADirectoryError``), or ``history.safetensors`` is a folder.
"""

from __future__ import annotations

import csv
import json
import logging
import warnings

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import CSVLogger

from frx_insightface.arcface_torch import ArcFaceTorchCallback
from frx_lightning import AttributeRecoveryCallback
from frx_plugin.history import read_history
from tests.lightning_helpers import TinyFaceModule, make_probe, make_train_loader
from tests.tensorboard_helpers import summary_tags


class _Unblock(Callback):
    """Makes the history folder writable again (removes the file it lay under) when epoch ``at`` starts."""

    def __init__(self, blocker, at: int) -> None:
        self.blocker, self.at = blocker, at

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.at and self.blocker.is_file():
            self.blocker.unlink()


def _trainer(tmp_path, callbacks, max_epochs):
    return Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, callbacks=callbacks, logger=CSVLogger(tmp_path, name="logs"),
                   enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)


def _csv_steps(trainer, column):
    with open(trainer.logger.log_dir + "/metrics.csv") as fh:
        return [int(r["step"]) for r in csv.DictReader(fh) if r.get(column)]


def _frx_warnings(caught):
    return [str(w.message) for w in caught if str(w.message).startswith("frx")]


def test_lightning_a_pass_whose_files_cannot_be_written_is_logged_recorded_and_written_at_the_next_pass(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("the history folder lies under this file until epoch 1 starts")
    out = blocker / "frx"
    callback = AttributeRecoveryCallback(make_probe(), out_dir=out, n_bootstrap=0, transform="unit", counterfactuals="off")
    trainer = _trainer(tmp_path, [callback, _Unblock(blocker, at=1)], 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(TinyFaceModule(), make_train_loader())
    assert trainer.current_epoch == 2  # training went on
    steps = [r["global_step"] for r in callback.history.records]
    assert [r["epoch"] for r in callback.history.records] == [0, 1, 2] and callback.failures == []

    # the loggers have every pass's scalars, the two unwritten ones included, and say which were not written
    assert _csv_steps(trainer, "frx/leakage/bright") == steps
    assert _csv_steps(trainer, "frx/history_write_failed") == steps[:2]

    # the warning names the folder and the OSError, and never calls a kept pass skipped
    said = _frx_warnings(caught)
    unwritten = [w for w in said if "could not be written" in w]
    assert len(unwritten) == 2 and all(str(out) in w and "Not a directory" in w for w in unwritten)
    assert not any("skipped" in w for w in said), said
    assert any("written again" in w for w in said), said

    # the in-memory records say it too; the pass written at once has no such field
    for record in callback.history.records[:2]:
        assert str(out) in record["write_error"] and "NotADirectoryError" in record["write_error"]
    assert "write_error" not in callback.history.records[2]

    # the history written once the folder could be written holds every pass, with what went wrong
    _, records, tensors = read_history(out)
    assert [r["global_step"] for r in records] == steps
    assert [("write_error" in r) for r in records] == [True, True, False]
    assert {k.split(".")[0] for k in tensors} == {"pass0", "pass1", "pass2"}


def test_lightning_on_error_raise_raises_on_an_unwritable_history_after_the_loggers_have_the_pass(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    callback = AttributeRecoveryCallback(make_probe(), out_dir=blocker / "frx", n_bootstrap=0, transform="unit",
                                         counterfactuals="off", on_error="raise")
    trainer = _trainer(tmp_path, [callback], 2)
    with pytest.raises(OSError, match=r"history could not be written to .*a-file/frx.*Not a directory"):
        trainer.fit(TinyFaceModule(), make_train_loader())
    assert callback.history.epochs == [0]  # it stopped at the first pass ...
    assert _csv_steps(trainer, "frx/leakage/bright") == [0]  # ... whose scalars the logger has
    assert _csv_steps(trainer, "frx/history_write_failed") == [0]


def _loop(frx, steps, before_step=None):
    """A train_v2-style loop: the step number (from 1), the optimizer step, then the callback (with torch.no_grad)."""
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())
    head = torch.nn.Linear(32, 12)
    opt = torch.optim.SGD(list(backbone.parameters()) + list(head.parameters()), lr=0.05)
    for global_step, (images, labels) in enumerate(make_train_loader(), start=1):
        if before_step is not None:
            before_step(global_step)
        loss = F.cross_entropy(head(backbone(images)), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            frx(global_step, backbone)
        if global_step == steps:
            return


def test_arcface_torch_a_pass_whose_files_cannot_be_written_is_logged_recorded_and_written_at_the_next_pass(tmp_path, caplog):
    from tensorboardX import SummaryWriter

    caplog.set_level(logging.INFO, logger="frx")
    out = tmp_path / "frx"
    (out / "history.safetensors").mkdir(parents=True)  # a folder where the history's tensors go
    writer = SummaryWriter(str(tmp_path / "tb"))
    frx = ArcFaceTorchCallback(make_probe(), out_dir=out, every_n_steps=1, writer=writer, transform="unit", counterfactuals="off")

    def fix_at_step_3(step):
        if step == 3:
            (out / "history.safetensors").rmdir()

    _loop(frx, steps=3, before_step=fix_at_step_3)
    writer.close()

    # the writer has every pass's scalars, and the two passes whose files were not written
    tags = summary_tags(tmp_path / "tb", kind="scalar")
    assert tags["frx/leakage/tone"] == [1, 2, 3]
    assert tags["frx/history_write_failed"] == [1, 2]
    # the training log has each pass's line, and a warning naming the file and the OSError, never "skipped"
    messages = [r.getMessage() for r in caplog.records if r.name == "frx"]
    assert [m.split()[2] for m in messages if m.startswith("frx: step ")] == ["1", "2", "3"]
    unwritten = [r.getMessage() for r in caplog.records if "could not be written" in r.getMessage()]
    assert len(unwritten) == 2 and all(str(out) in m and "IsADirectoryError" in m for m in unwritten)
    assert all(r.levelno == logging.WARNING for r in caplog.records if "could not be written" in r.getMessage())
    assert not any("skipped" in m for m in messages), messages
    # the records in memory and the history on disk once it could be written: every pass, with what went wrong
    assert [("write_error" in r) for r in frx.history.records] == [True, True, False]
    assert "history.safetensors" in frx.history.records[0]["write_error"]
    records = json.loads((out / "history.json").read_text())["records"]
    assert [r["global_step"] for r in records] == [1, 2, 3]
    assert [r.get("write_error") for r in records[:2]] == [r["write_error"] for r in frx.history.records[:2]]
    assert frx.failures == []


def test_arcface_torch_on_error_raise_raises_on_an_unwritable_history_after_the_writer_and_the_log_have_the_pass(tmp_path, caplog):
    from tensorboardX import SummaryWriter

    caplog.set_level(logging.INFO, logger="frx")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    writer = SummaryWriter(str(tmp_path / "tb"))
    frx = ArcFaceTorchCallback(make_probe(), out_dir=blocker / "frx", every_n_steps=1, writer=writer, transform="unit",
                               counterfactuals="off", on_error="raise")
    with pytest.raises(OSError, match=r"history could not be written to .*a-file/frx.*Not a directory"):
        _loop(frx, steps=3)
    writer.close()
    tags = summary_tags(tmp_path / "tb", kind="scalar")
    assert tags["frx/leakage/tone"] == [1] and tags["frx/history_write_failed"] == [1]
    assert any(r.getMessage().startswith("frx: step 1 ") for r in caplog.records)


def test_arcface_torch_on_error_raise_stops_every_rank_when_rank_0_cannot_write_the_history(tmp_path):
    from pathlib import Path

    from tests.ddp_launch import HANG_LIMIT_S, run_two_ranks

    (tmp_path / "a-file").write_text("not a folder")
    run_two_ranks(Path(__file__).with_name("arcface_torch_unwritable_script.py"), str(tmp_path), timeout=HANG_LIMIT_S)
    raised = {r: (tmp_path / f"rank{r}.txt").read_text() for r in (0, 1) if (tmp_path / f"rank{r}.txt").exists()}
    assert set(raised) == {0, 1}, raised  # every rank stopped, none hung waiting
    assert f"history could not be written to {tmp_path / 'a-file' / 'frx'}: NotADirectoryError" in raised[0]
    assert "history could not be written to" in raised[1] and "by the process that writes it" in raised[1]
