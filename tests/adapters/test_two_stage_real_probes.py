"""Both callbacks' two-stage schedule on real-format probe sets no estimator plugin reads: a CelebA folder (its
list_attr_celeba.txt and identity_CelebA.txt, JPEGs) in a Lightning run, an image folder with a CSV in an
arcface_torch-style loop. Stage 2 is the estimator trained on the probe set's own faces: a planted attribute is
readable, a label that is noise is not. Before: "no estimator can read the attributes of …"."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer
from PIL import Image

from frx_lightning import AttributeRecoveryCallback
from frx_plugin.history import read_history
from frx_plugin.passes import AnalysisConfig
from frx_plugin.two_stage import TwoStageConfig
from tests.lightning_helpers import TinyFaceModule, make_train_loader

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))
from test_probe_estimator import write_face_folder

FAST = TwoStageConfig(steps=3, samples=2, n_bootstrap=10)


def write_celeba(root, n_ids=20, per_id=4):
    """CelebA's files as the dataset ships them; Eyeglasses is a dark band across the eyes, Male is noise."""
    (root / "img_align_celeba").mkdir(parents=True)
    rng = np.random.default_rng(3)
    rows, identities = [], []
    for i in range(n_ids):
        tone = rng.uniform(0.3, 0.8, 3)
        for j in range(per_id):
            name = f"{i * per_id + j + 1:06d}.jpg"
            glasses, male = int(rng.integers(2)), int(rng.integers(2))
            pixels = np.clip(tone + rng.normal(0, 0.1, (218, 178, 3)), 0, 1)
            if glasses:
                pixels[95:125, 20:158, :] = 0.05
            Image.fromarray((pixels * 255).astype(np.uint8)).save(root / "img_align_celeba" / name, quality=95)
            rows.append(f"{name} {2 * glasses - 1:>2} {2 * male - 1:>2}")
            identities.append(f"{name} {i + 1}")
    (root / "list_attr_celeba.txt").write_text(f"{len(rows)}\nEyeglasses Male\n" + "\n".join(rows) + "\n")
    (root / "identity_CelebA.txt").write_text("\n".join(identities) + "\n")
    return root


def test_lightning_callback_two_stage_on_a_celeba_folder(tmp_path, monkeypatch):
    from frx_insightface.readers import CelebAProbeSet

    monkeypatch.setenv("FRX_CACHE_DIR", str(tmp_path / "cache"))
    probe = CelebAProbeSet(write_celeba(tmp_path / "celeba"), size=32, align="none")
    callback = AttributeRecoveryCallback(probe, out_dir=tmp_path / "frx", n_bootstrap=10, decode_every_n_epochs=1, two_stage=FAST,
                                         counterfactuals="off")
    trainer = Trainer(max_epochs=1, accelerator="cpu", devices=1, callbacks=[callback], logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(TinyFaceModule(), make_train_loader())
    assert callback.failures == []
    _, records, _ = read_history(tmp_path / "frx")
    assert len(records) == 2 and all(r["recovery"] for r in records)
    recovery = records[-1]["recovery"]
    assert recovery["estimator"] == "trained"
    glasses, male = recovery["attributes"]["eyeglasses"], recovery["attributes"]["male"]
    assert glasses["readable"] and glasses["real_images"] > 0.8 and glasses["two_stage"]["low"] <= glasses["two_stage"]["value"]
    assert not male["readable"]
    assert (tmp_path / "frx" / "decoded.png").is_file()


def _image_folder_and_backbone(tmp_path, monkeypatch):
    """An image folder with a CSV (written here, 20 identities × 4 faces at 32×32) and a small seeded backbone."""
    from frx_insightface.readers import ImageFolderProbeSet

    monkeypatch.setenv("FRX_CACHE_DIR", str(tmp_path / "cache"))
    folder = write_face_folder(tmp_path, n_ids=20, per_id=4, size=32)
    probe = ImageFolderProbeSet(folder, align="none", size=32, kinds="square:binary;coin:binary;shade:continuous")
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4),
                                   torch.nn.Flatten(), torch.nn.Linear(128, 16))
    return probe, backbone


def test_arcface_torch_callback_two_stage_on_an_image_folder(tmp_path, monkeypatch):
    from frx_insightface.arcface_torch import ArcFaceTorchCallback

    probe, backbone = _image_folder_and_backbone(tmp_path, monkeypatch)
    head = torch.nn.Linear(16, 12)
    opt = torch.optim.SGD(list(backbone.parameters()) + list(head.parameters()), lr=0.05)
    frx = ArcFaceTorchCallback(probe, out_dir=tmp_path / "frx", every_n_steps=2, decode_every_n_steps=2, two_stage=FAST,
                               config=AnalysisConfig(n_bootstrap=10), counterfactuals="off")
    for step, (images, labels) in enumerate(make_train_loader(), start=1):
        loss = F.cross_entropy(head(backbone(images)), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        frx(step, backbone)
        if step == 2:
            break
    _, records, _ = read_history(tmp_path / "frx")
    recovery = records[-1]["recovery"]
    assert recovery["estimator"] == "trained"
    assert recovery["attributes"]["square"]["readable"] and not recovery["attributes"]["coin"]["readable"]
    shade = recovery["attributes"]["shade"]
    assert shade["readable"] and shade["two_stage"]["low"] <= shade["two_stage"]["value"] <= shade["two_stage"]["high"]


def test_arcface_torch_callback_decoded_counterfactuals_on_an_image_folder(tmp_path, monkeypatch):
    """No generator renders an image folder: with the two stages the pass makes decoded counterfactuals, logs S_k and
    the error shares from them, and sends the strip of explained errors to the SummaryWriter and counterfactuals.png."""
    from tensorboardX import SummaryWriter

    from frx_insightface.arcface_torch import ArcFaceTorchCallback
    from tests.tensorboard_helpers import summary_tags

    probe, backbone = _image_folder_and_backbone(tmp_path, monkeypatch)
    writer = SummaryWriter(str(tmp_path / "tb"))
    frx = ArcFaceTorchCallback(probe, out_dir=tmp_path / "frx", every_n_steps=1, decode_every_n_steps=1, two_stage=FAST,
                               config=AnalysisConfig(n_bootstrap=10, fmr=0.01), writer=writer)
    frx(1, backbone)
    writer.close()
    _, records, _ = read_history(tmp_path / "frx")
    record = records[-1]
    assert record["counterfactuals"] == "decoded" and set(record["significance"]) == {"square", "coin", "shade"}
    assert record["counterfactual_budget"]["scaled"]
    scalars = summary_tags(tmp_path / "tb", kind="scalar")
    assert scalars["frx/significance/square"] == [1] and scalars["frx/errors/square"] == [1]
    assert summary_tags(tmp_path / "tb", kind="image")["frx/counterfactuals"] == [1]
    assert (tmp_path / "frx" / "counterfactuals.png").read_bytes()[:4] == b"\x89PNG"
    from frx_plugin.commands.report import write_report

    text = write_report(tmp_path / "frx").read_text(encoding="utf-8")
    assert "decoded counterfactuals" in text and "Counterfactual faces (the last pass with decoded counterfactuals)" in text
