"""InsightFace recognition models as frx backbones: real ONNX files exported here, loaded by insightface's model_zoo."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from frx_insightface.backbone import export_onnx, load_insightface_backbone
from frx_insightface.readers import DataFormatError
from frx_plugin.model import embed_probe_set
from frx_plugin.models import ResidualFaceNet
from frx_plugin.synthetic import SyntheticProbeSet


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return ResidualFaceNet(embedding_dim=32, widths=(8, 8, 16, 16), input_size=64).eval()


def _reference(net, images):
    """What the torch backbone gives for 112×112 RGB images in [0, 1] (resized to its 64×64 input)."""
    with torch.no_grad():
        return F.normalize(net(F.interpolate(images, size=(64, 64), mode="bilinear", align_corners=False)), dim=1)


@pytest.mark.parametrize("inside", [False, True])
def test_exported_backbone_round_trips_through_insightface(tmp_path, backbone, inside):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        path = export_onnx(backbone, tmp_path / "rec.onnx", normalisation_in_graph=inside)
    model = load_insightface_backbone(path)
    assert type(model.model).__name__ == "ArcFaceONNX" and model.input_size == (112, 112)
    # insightface finds the normalisation in the graph (then feeds raw pixels) or applies its own: never both
    assert (model.input_mean, model.input_std) == ((0.0, 1.0) if inside else (127.5, 127.5))
    images = torch.rand(6, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    assert float((model.embed(images) - _reference(backbone, images)).abs().max()) < 1e-5
    # images of another size are resized to the model's input first
    small = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    big = F.interpolate(small, size=(112, 112), mode="bilinear", align_corners=False, antialias=True)
    assert float((model.embed(small) - model.embed(big)).abs().max()) < 1e-5


def test_flip_sum_and_the_frx_embed_hook(tmp_path, backbone, fresh_plugins):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export_onnx(backbone, tmp_path / "rec.onnx")
    flipped = load_insightface_backbone(path, flip=True)
    images = torch.rand(4, 3, 112, 112, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        raw = lambda x: backbone(F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False))  # noqa: E731
        want = F.normalize(raw(images) + raw(images.flip(3)), dim=1)
    assert float((flipped.embed(images) - want).abs().max()) < 1e-5
    # frx embeds a probe set with it through the frx_embed hook of the InsightFace plugin
    probe = SyntheticProbeSet(3, 2, size=112)
    plain = load_insightface_backbone(path)
    z = embed_probe_set(plain, probe, batch_size=4)
    assert float((z - _reference(backbone, probe.images(torch.arange(6)))).abs().max()) < 1e-5


def test_missing_and_foreign_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no ONNX model at .*nowhere\.onnx\. frx never downloads"):
        load_insightface_backbone(tmp_path / "nowhere.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(DataFormatError, match=r"junk\.onnx: insightface cannot open it"):
        load_insightface_backbone(junk)
    # a graph whose input no insightface model class takes (50×50)
    odd = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 50 * 50, 8)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(odd, (torch.zeros(1, 3, 50, 50),), str(tmp_path / "odd.onnx"), dynamo=False)
    with pytest.raises(DataFormatError, match=r"odd\.onnx: insightface routes this ONNX file to no model class \(input \[1, 3, 50, 50\]"):
        load_insightface_backbone(tmp_path / "odd.onnx")
