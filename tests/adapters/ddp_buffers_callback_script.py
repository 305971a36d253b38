"""Run by tests/adapters/test_ddp_buffers.py as a subprocess: the Lightning callback under real 2-process DDP (gloo, CPU)
with a BatchNorm model, whose ranks' running statistics differ after training (broadcast_buffers=True, Lightning's
default, broadcasts them before each forward; the forward then updates each rank's with its own batch).

Arguments: the output folder. Global zero writes ``state.pt``, the model's state dict after fit (what Lightning's
checkpoints hold). ``ddp`` re-runs this script for rank 1.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
from lightning.pytorch import Trainer, seed_everything  # noqa: E402

from frx_lightning import AttributeRecoveryCallback  # noqa: E402
from tests.lightning_helpers import TinyFaceModule, make_probe, make_train_loader  # noqa: E402


class BatchNormFaceModule(TinyFaceModule):
    """TinyFaceModule with BatchNorm in its trunk."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                       torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(128, 16))


def make_callback(out):
    return AttributeRecoveryCallback(make_probe(n_identities=17, per_identity=7, seed=3), out_dir=out, n_bootstrap=0,
                                     counterfactuals="off", transform="unit")


if __name__ == "__main__":
    out = Path(sys.argv[1])
    seed_everything(0)
    model = BatchNormFaceModule()
    trainer = Trainer(max_epochs=1, accelerator="cpu", devices=2, strategy="ddp", callbacks=[make_callback(out)], logger=False,
                      enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(model, make_train_loader())
    if trainer.is_global_zero:
        torch.save(model.state_dict(), out / "state.pt")
