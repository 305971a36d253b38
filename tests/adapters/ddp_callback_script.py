"""Run by tests/test_ddp.py as a subprocess: the callback under real 2-process DDP (gloo, CPU).

``ddp`` re-runs this script for rank 1, so everything happens at import-free top level under ``__main__``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lightning.pytorch import Trainer, seed_everything  # noqa: E402

from frx_lightning import AttributeRecoveryCallback  # noqa: E402
from frx_plugin.plugins import get_plugin_manager  # noqa: E402
from frx_plugin.two_stage import TwoStageConfig  # noqa: E402
from tests.lightning_helpers import PixelEstimatorPlugin, TinyFaceModule, make_probe, make_train_loader  # noqa: E402


class NanOnRankOne(TinyFaceModule):
    """A model whose embeddings turn NaN from epoch 1, on the second process only."""

    def forward(self, images):
        z = self.net(images)
        if self.global_rank == 1 and self.current_epoch >= 1 and not self.training:
            z = z * float("nan")
        return z


if __name__ == "__main__":
    out, devices = sys.argv[1], int(sys.argv[2])
    mode = sys.argv[3] if len(sys.argv) > 3 else ""
    broken = mode == "nan-on-rank-1"
    seed_everything(0)
    probe = make_probe(n_identities=17, per_identity=7, seed=3)  # 119 samples: not a multiple of 2
    # the two-stage path too (each process trains the decoder of its own fold), except in the broken run
    # ("estimator-32": an estimator for 32x32 faces, which the 16x16 probe's decoder cannot feed: a setup error)
    get_plugin_manager().register(PixelEstimatorPlugin(size=32) if mode == "estimator-32" else PixelEstimatorPlugin())
    two_stage = {} if broken else {"decode_every_n_epochs": 1, "two_stage": TwoStageConfig(steps=20, samples=2, n_bootstrap=30)}
    callback = AttributeRecoveryCallback(probe, out_dir=out, n_bootstrap=30, **two_stage)
    # with the two stages the counterfactuals are decoded; a second callback measures the latent ones in the same run
    latent = [] if broken else [AttributeRecoveryCallback(probe, out_dir=Path(out) / "latent", n_bootstrap=30, counterfactuals="latent")]
    trainer = Trainer(
        max_epochs=2 if broken else 1,
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        callbacks=[callback, *latent],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(NanOnRankOne() if broken else TinyFaceModule(), make_train_loader())
