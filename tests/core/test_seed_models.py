"""The seed's face models (MobileFaceNet, IR-SE-50) in frx's code against the seed's own modules' outputs.

The weights come from the formula in ``tests/fixtures/stylegan/weights.py`` (the same one the fixture
script loaded into the seed's ``face_utils/arcface.py`` models), saved here as the seed's files are
(a DataParallel state dict, ``module.`` prefix), and loaded through the backbone specs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from frx_plugin.checkpoints import key_shapes
from frx_plugin.errors import CheckpointError
from frx_plugin.model import ModelAdapter
from frx_plugin.seed_models import IRSEBackbone, SeedMobileFaceNet
from frx_plugin.specs import open_backbone
from tests.fixtures.stylegan.weights import arcface_state

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "stylegan"


def _seed_file(tmp_path: Path, layout: dict, name: str) -> Path:
    state = arcface_state({k: tuple(v) for k, v in layout.items()})
    path = tmp_path / name
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    return path


@pytest.mark.parametrize("kind,name,cls", [("seed-mobilefacenet", "mobilefacenet", SeedMobileFaceNet),
                                           ("seed-irse50", "irse50", IRSEBackbone)])
def test_the_seed_face_models_reproduce_the_seed(reference, layouts, tmp_path, fresh_plugins, kind, name, cls):
    layout = {k: tuple(v) for k, v in layouts[name].items()}
    assert key_shapes(cls()) == layout
    model, _ = open_backbone(f"{kind}:{_seed_file(tmp_path, layouts[name], name + '.pth')}")
    assert isinstance(model, cls) and not model.training
    faces = reference["faces"]  # 112×112 in [-1, 1], what the seed's models take
    with torch.no_grad():
        z = model(faces)
    assert (z - reference[f"{name}.embedding"]).abs().max().item() < 1e-4
    assert torch.allclose(z.norm(dim=1), torch.ones(len(z)))
    # frx's model contract: probe images in [0, 1] through the arcface transform, any size resized to 112×112
    adapter = ModelAdapter(model)
    assert adapter.transform_option == "arcface"
    with torch.no_grad():
        assert (adapter.module(adapter.transform((faces + 1) / 2)) - z).abs().max().item() < 1e-5
        assert model(torch.nn.functional.interpolate(faces, size=(120, 120), mode="bilinear")).shape == (2, 512)


def test_seed_face_model_errors(tmp_path, fresh_plugins):
    with pytest.raises(CheckpointError, match=r"arcface_mb\.pth: no such file; the seed's README "
                                              r"\(github\.com/RenMin1991/Facial-Attribute-Recovery\)"):
        open_backbone(f"seed-mobilefacenet:{tmp_path / 'arcface_mb.pth'}")
    state = SeedMobileFaceNet().state_dict()
    del state["conv_6_dw.bn.running_var"]
    state["conv1.conv.weight"] = torch.zeros(64, 3, 5, 5)
    torch.save(state, tmp_path / "mb.pth")
    with pytest.raises(CheckpointError) as caught:
        open_backbone(f"seed-mobilefacenet:{tmp_path / 'mb.pth'}")
    assert "\n" not in str(caught.value)
    assert "missing conv_6_dw.bn.running_var" in str(caught.value)
    assert "mis-shaped conv1.conv.weight (64, 3, 5, 5) (expected (64, 3, 3, 3))" in str(caught.value)
    torch.save(SeedMobileFaceNet().state_dict(), tmp_path / "mb.pth")
    with pytest.raises(CheckpointError, match=r"mb\.pth: not an IR-SE 50/100/152 backbone"):
        open_backbone(f"seed-irse50:{tmp_path / 'mb.pth'}")
    # the BatchNorm step counters may be absent (files saved before PyTorch 0.4.1)
    state = {k: v for k, v in SeedMobileFaceNet().state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pth")
    assert isinstance(open_backbone(f"seed-mobilefacenet:{tmp_path / 'old.pth'}")[0], SeedMobileFaceNet)
