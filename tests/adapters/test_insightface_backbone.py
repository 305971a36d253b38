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


def test_explicit_mean_std_and_bgr_channels(tmp_path, backbone):
    """``mean=``/``std=`` override the normalisation insightface detects; ``channels=bgr`` flips the channels first:
    checked against onnxruntime fed the same pixels, normalised here."""
    import numpy as np
    import onnxruntime

    from frx_plugin.specs import open_backbone

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export_onnx(backbone, tmp_path / "rec.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = torch.rand(5, 3, 112, 112, generator=torch.Generator().manual_seed(4))
    pixels = images * 255.0

    def onnx_run(blob):
        out = session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(blob.numpy(), dtype=np.float32)})[0]
        return F.normalize(torch.from_numpy(out), dim=1)

    # the detected normalisation (127.5/127.5) and the same values given explicitly embed alike
    default, _ = open_backbone(f"insightface:{path}")
    same, _ = open_backbone(f"insightface:{path},mean=127.5,std=127.5")
    assert float((default.embed(images) - same.embed(images)).abs().max()) < 1e-6
    assert float((default.embed(images) - onnx_run((pixels - 127.5) / 127.5)).abs().max()) < 1e-5
    # per-channel values, BGR order: the model is fed (BGR pixels − mean) / std, the values in the fed order
    model, _ = open_backbone(f"insightface:{path},mean=100/120/140,std=50,channels=bgr")
    assert (model.input_mean, model.input_std, model.channels) == ((100.0, 120.0, 140.0), 50.0, "bgr")
    mean = torch.tensor([100.0, 120.0, 140.0]).view(1, 3, 1, 1)
    want = onnx_run((pixels[:, [2, 1, 0]] - mean) / 50.0)
    got = model.embed(images)
    assert float((got - want).abs().max()) < 1e-5
    assert float((got - default.embed(images)).abs().max()) > 1e-2  # the options change the embedding
    # an explicit mean overrides one the graph normalises by itself (detected 0/1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inside = export_onnx(backbone, tmp_path / "inside.onnx", normalisation_in_graph=True)
    raw, _ = open_backbone(f"insightface:{inside}")
    assert (raw.input_mean, raw.input_std) == (0.0, 1.0)
    shifted, _ = open_backbone(f"insightface:{inside},mean=-127.5")
    assert shifted.input_std == 1.0
    session = onnxruntime.InferenceSession(str(inside), providers=["CPUExecutionProvider"])
    assert float((shifted.embed(images) - onnx_run(pixels + 127.5)).abs().max()) < 1e-5
    with pytest.raises(ValueError, match=r"std must be positive"):
        load_insightface_backbone(path, std=0)
