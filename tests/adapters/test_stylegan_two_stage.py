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
from lightning.pytorch import Trainer

from frx_insightface.arcface_torch import ArcFaceTorchCallback
from frx_lightning import AttributeRecoveryCallback
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
    # no generator renders this probe set: its counterfactuals are edited in W+ and rendered by the StyleGAN2 decoder
    assert [r["counterfactuals"] for r in records] == ["decoded", "decoded"]
    assert all(math.isfinite(r["significance"][name]["value"]) for r in records for name in ("bright", "pattern", "tone"))
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


def test_the_seeds_encoder_decodes_in_the_two_stage_path_without_training(pixels):
    """With encoder= the fold decoders are the seed's decoder as saved: nothing trained, nothing kept, losses measured."""
    from frx_plugin.model import embed_probe_set
    from frx_plugin.two_stage import TwoStage, run_two_stage
    from frx_plugin.two_stage.stylegan import StyleGANFaceDecoder

    fixtures = GENERATOR.parent
    options = {"generator": str(fixtures / "generator_a.pt"), "encoder": str(fixtures / "latent_transformer.pth"),
               "mean_latent": str(fixtures / "mean_wplus.pth")}
    from frx_plugin.model import ModelAdapter

    probe, model = make_probe(), ModelAdapter(TinyFaceModule(dim=64).net.eval(), transform="unit")  # 64-d: the encoder's width
    two_stage = TwoStage(probe, TwoStageConfig(decoder="stylegan2", decoder_options=options, samples=1, n_bootstrap=0))
    z = embed_probe_set(model, probe)
    recovery, results = run_two_stage(two_stage, z, model)
    assert recovery["decoder"] == "stylegan2" and recovery["errors"] == [] and two_stage.state_dict() == {}
    assert all(fit["steps"] == 0 and fit["pixel_loss_start"] > 0 for fit in recovery["decoder_fits"].values())
    # each held-out face is the seed's decoding of its embedding, at the probe's 16×16
    seed = StyleGANFaceDecoder(64, (3, 16, 16), **options)
    rows = results[0].rows[: results[0].decoded.shape[0]]
    assert (results[0].decoded[:, 0] - seed.decode(z[rows])[:, 0]).abs().max() < 1e-5
    assert all(math.isfinite(recovery["attributes"][name]["two_stage"]["value"]) for name in ("bright", "pattern", "tone"))


def test_a_missing_generator_file_is_one_line_in_the_pass(pixels, tmp_path):
    from frx_plugin.errors import CheckpointError
    from frx_plugin.model import embed_probe_set
    from frx_plugin.two_stage import TwoStage, run_two_stage

    probe, model = make_probe(), TinyFaceModule().net.eval()
    model.frx_transform = "unit"
    config = TwoStageConfig(decoder="stylegan2", decoder_options={"generator": str(tmp_path / "gone.pt")}, n_bootstrap=0)
    with pytest.raises(CheckpointError, match=r"^StyleGAN2 generator checkpoint .*gone\.pt: no such file[^\n]*$"):
        run_two_stage(TwoStage(probe, config), embed_probe_set(model, probe), model)
