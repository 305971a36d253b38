"""frx in a Lightning run changes nothing of the training: the same seed gives the same weights with the
callback as without it (its passes draw no number from the training's generators, touch no gradient)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer, seed_everything
from torch.utils.data import DataLoader, TensorDataset

from frx_lightning import AttributeRecoveryCallback
from frx_plugin.plugins import get_plugin_manager
from frx_plugin.two_stage import TwoStageConfig
from tests.lightning_helpers import PixelEstimatorPlugin, make_faces, make_probe


class DropoutFaceModule(LightningModule):
    """Training that draws from torch's generator at every step: dropout, and a shuffling loader."""

    frx_transform = "unit"

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                       torch.nn.Dropout(0.3), torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(128, 16))
        self.classifier = torch.nn.Linear(16, 12)

    def forward(self, images):
        return self.net(images)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        return F.cross_entropy(self.classifier(self.net(images)), labels)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def _train(tmp_path, with_frx: bool) -> dict[str, torch.Tensor]:
    seed_everything(0, verbose=False)
    images, identity, _ = make_faces(12, 8, seed=2)
    loader = DataLoader(TensorDataset(images, identity), batch_size=16, shuffle=True)
    model = DropoutFaceModule()
    callbacks = []
    if with_frx:
        callbacks.append(AttributeRecoveryCallback(make_probe(), out_dir=tmp_path / "frx", n_bootstrap=10, on_error="raise",
                                                   every_n_train_steps=3, decode_every_n_epochs=1,
                                                   two_stage=TwoStageConfig(steps=5, samples=2, n_bootstrap=0)))
    trainer = Trainer(max_epochs=2, accelerator="cpu", devices=1, callbacks=callbacks, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(model, loader)
    if with_frx:
        assert callbacks[0].failures == [] and len(callbacks[0].history.records) >= 4  # passes ran, between steps too
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_the_same_seed_trains_the_same_weights_with_frx_as_without(tmp_path, fresh_plugins):
    get_plugin_manager().register(PixelEstimatorPlugin())
    without = _train(tmp_path / "without", with_frx=False)
    with_frx = _train(tmp_path / "with", with_frx=True)
    assert without.keys() == with_frx.keys()
    for name, value in without.items():
        assert torch.equal(value, with_frx[name]), f"{name} differs: frx changed the training"
