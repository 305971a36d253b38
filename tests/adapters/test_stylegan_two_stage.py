"""A Lightning run and an arcface_torch loop decode their own embeddings with a StyleGAN2 checkpoint during training.

The committed fixture ``generator_b.pt`` (a rosinality-format ``{"g_ema": ...}`` checkpoint, 32×32) is the
generator; the model is not the seed's, so each fold's latent transformer is trained for it, warm-started
from pass to pass, and the history holds R_k of the two-stage path through it.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from frx_insightface.arcface_torch import ArcFaceTorchCallback
from frx_lightning import AttributeRecoveryCallback
from lightning.pytorch import Trainer

from frx_plugin.history import read_history
from frx_plugin.plugins import get_plugin_manager
from frx_plugin.two_stage import TwoStageConfig
from tests.lightning_helpers import (
    PixelEstimatorPlugin,
    TinyFaceModule,
    make_probe,
    make_train_loader,
)

GENERATOR = Path(__file__).resolve().parents[1] / "fixtures" / "stylegan" / "generator_b.pt"
CONFIG = TwoStageConfig(decoder="stylegan2", decoder_options={"generator": str(GENERATOR), "lr": 3e-3, "batch_size": 8},
                        steps=10, samples=1, n_bootstrap=10, figure_faces=2)


@pytest.fixture
def pixels(fresh_plugins):
    get_plugin_manager().register(PixelEstimatorPlugin())


def _check_recovery(records: list[dict]) -> None:
    """Every pass decoded through the trained transformer; the second fit of each fold started where the first ended."""
    recoveries = [r["recovery"] for r in records]
    assert len(recoveries) == 2 and all(rec and rec["decoder"] == "stylegan2" and rec["errors"] == [] for rec in recoveries)
    for rec in recoveries:
        for name in ("bright", "pattern", "tone"):
            entry = rec["attributes"][name]
            assert math.isfinite(entry["two_stage"]["value"]) and math.isfinite(entry["direct"]["value"])
        assert -1 <= rec["identity_similarity"]["decoded"] <= 1
        for fit in rec["decoder_fits"].values():
            assert fit["identity_loss_end"] < fit["identity_loss_start"]
    for fold in ("0", "1"):
        first, second = (rec["decoder_fits"][fold] for rec in recoveries)
        assert second["identity_loss_start"] < first["identity_loss_start"]


def test_a_lightning_run_decodes_with_a_stylegan2_checkpoint(tmp_path, pixels):
    callback = AttributeRecoveryCallback(make_probe(), out_dir=tmp_path / "frx", n_bootstrap=10, decode_every_n_epochs=1, transform="unit",
                                         two_stage=CONFIG)
    trainer = Trainer(max_epochs=1, accelerator="cpu", devices=1, callbacks=[callback], logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(TinyFaceModule(), make_train_loader())
    assert callback.failures == []
    _, records, _ = read_history(tmp_path / "frx")
    _check_recovery(records)
    assert (tmp_path / "frx" / "decoded.png").read_bytes()[:4] == b"\x89PNG"
    state = callback.state_dict()["two_stage"]  # the trained transformers, for a resumed run
    assert {k.split(".")[0] for k in state} == {"fold0", "fold1"} and "fold0.project.weight" in state
    assert not any(".generator." in k for k in state)  # the frozen generator is read from its file, never saved


def test_an_arcface_torch_loop_decodes_with_a_stylegan2_checkpoint(tmp_path, pixels):
    model = TinyFaceModule()
    backbone, head = model.net, model.classifier
    frx = ArcFaceTorchCallback(make_probe(), out_dir=tmp_path / "frx", every_n_steps=2, decode_every_n_steps=2,
                               two_stage=CONFIG, n_bootstrap=10, transform="unit")
    optimizer = torch.optim.SGD(list(backbone.parameters()) + list(head.parameters()), lr=0.05)
    for global_step, (images, labels) in enumerate(make_train_loader(), start=1):
        loss = F.cross_entropy(head(backbone(images)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        frx(global_step, backbone)
        if global_step == 4:
            break
    _, records, _ = read_history(tmp_path / "frx")
    assert [r["global_step"] for r in records] == [2, 4]
    _check_recovery(records)
