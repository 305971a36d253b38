"""A LightningModule around a timm-shaped classifier (``self.model``), under a real Trainer: frx records its pre-logits
features, not its class scores, and says so once."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer

from frx_lightning import AttributeRecoveryCallback
from frx_plugin.history import read_history
from frx_plugin.passes import AnalysisConfig, analyze_probe
from tests.core.test_conventions import TimmLike, timm_features
from tests.lightning_helpers import make_probe, make_train_loader


class ClassifierModule(LightningModule):
    """A LightningModule as users write one around a timm model: ``self.model``, its forward the class scores."""

    def __init__(self) -> None:
        super().__init__()
        self.model = TimmLike(num_classes=100, dim=64)

    def forward(self, images):
        return self.model(images)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        return F.cross_entropy(self(images), labels)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def test_a_lightning_classifier_is_recorded_by_its_pre_logits_features_with_one_warning(tmp_path):
    probe = make_probe()
    callback = AttributeRecoveryCallback(probe, out_dir=tmp_path / "frx", n_bootstrap=0, transform="unit", counterfactuals="off")
    model = ClassifierModule()
    trainer = Trainer(max_epochs=2, accelerator="cpu", devices=1, callbacks=[callback], logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, make_train_loader())
    said = [str(w.message) for w in caught if "class scores" in str(w.message)]
    assert len(said) == 1, said  # three passes, one warning
    assert "frx embeds model.forward_head(model.forward_features(x), pre_logits=True) instead, D = 64" in said[0]
    assert "its 100 class scores (from 'model.fc', Linear 64 → 100)" in said[0]
    assert "pass embed=lambda m, x: m.model.forward_head(m.model.forward_features(x), pre_logits=True)" in said[0]

    _, records, tensors = read_history(tmp_path / "frx")
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert tensors["pass2.probe_directions"].shape[1] == 64  # the embedding's width, not the 100 classes
    # the last pass equals an analysis of the trained model's pre-logits features, written out by hand
    model.eval()
    with torch.no_grad():
        z = F.normalize(timm_features(model.model, probe.images(torch.arange(len(probe)))), dim=1)
    reference = analyze_probe(z, probe, AnalysisConfig(n_bootstrap=0))
    for got, want in zip(records[-1]["attributes"], reference.leakage):
        assert got["name"] == want.name
        assert got["value"] == pytest.approx(want.value, abs=1e-6), got["name"]
    assert records[-1]["verification"]["tar"] == pytest.approx(reference.verification.tar, abs=1e-6)
    # the class scores read other numbers: the comparison above could fail
    with torch.no_grad():
        scores = analyze_probe(F.normalize(model(probe.images(torch.arange(len(probe)))), dim=1), probe, AnalysisConfig(n_bootstrap=0))
    assert max(abs(a.value - b.value) for a, b in zip(scores.leakage, reference.leakage) if a.value == a.value) > 1e-3
