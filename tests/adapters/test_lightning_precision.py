"""Passes under Lightning's mixed and true half precision: the model embeds in the precision it trains
in (its autocast, its bf16 weights) and the analysis after the forward runs in float32/float64."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch import Trainer

from frx_lightning import AttributeRecoveryCallback
from frx_plugin.model import ModelAdapter, embed_probe_set
from frx_plugin.passes import AnalysisConfig, analyze_probe
from tests.lightning_helpers import TinyFaceModule, make_probe, make_train_loader


class RecordingModule(TinyFaceModule):
    """Records the dtype of its first layer's output whenever it embeds outside training (frx's passes)."""

    frx_transform = "unit"

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.dtype] = []

    def forward(self, images):
        inner = self.net[0](images)
        if not self.training:
            self.seen.append(inner.dtype)
        return self.net[1:](inner)


def _fit(tmp_path, precision: str, accelerator: str = "cpu"):
    probe = make_probe()
    callback = AttributeRecoveryCallback(probe, out_dir=tmp_path / "frx", n_bootstrap=10, counterfactuals="off", on_error="raise")
    model = RecordingModule()
    trainer = Trainer(max_epochs=1, accelerator=accelerator, devices=1, precision=precision, callbacks=[callback], logger=False,
                      enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(model, make_train_loader())
    return probe, callback, model


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_a_half_precision_run_embeds_in_bf16_and_analyses_in_full_precision(tmp_path, precision):
    probe, callback, model = _fit(tmp_path, precision)
    assert callback.failures == []
    # two passes (before training, after epoch 0), every forward of them in bfloat16
    assert len(model.seen) >= 2 and set(model.seen) == {torch.bfloat16}
    report = callback.last_report
    assert all(math.isfinite(item.value) for item in report.leakage)
    # the same numbers from embeddings made by hand in the same precision, analysed in float32
    adapter = ModelAdapter(model)
    if precision == "bf16-mixed":
        adapter.forward_context = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    z = embed_probe_set(adapter, probe)
    assert z.dtype == torch.float32
    expected = analyze_probe(z, probe, AnalysisConfig(n_bootstrap=10))
    for got, want in zip(report.leakage, expected.leakage):
        assert got.name == want.name and got.value == pytest.approx(want.value, abs=1e-6)
    assert report.verification.tar == pytest.approx(expected.verification.tar, abs=1e-12)


def test_the_analysis_after_the_forward_is_not_under_autocast(tmp_path):
    """Embeddings in float32, fed to an analysis in float32 outside autocast, whatever the forward ran in."""
    probe = make_probe()
    model = RecordingModule().eval()
    adapter = ModelAdapter(model)
    adapter.forward_context = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    z = embed_probe_set(adapter, probe)
    assert z.dtype == torch.float32 and model.seen[-1] == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_16_mixed_run_on_cuda_embeds_in_float16(tmp_path):
    _, callback, model = _fit(tmp_path, "16-mixed", accelerator="gpu")
    assert callback.failures == [] and set(model.seen) == {torch.float16}
