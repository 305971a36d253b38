"""InsightFace's genderage model as an frx estimator: a small ONNX file of the real shapes, read by insightface's own class."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from frx_insightface.estimators import GenderAgeEstimator, GenderAgePlugin, PoseEstimator, PosePlugin
from frx_insightface.readers import DataFormatError
from frx_plugin.interfaces import AttributeEstimator
from frx_plugin.plugins import find_estimator, get_plugin_manager
from tests.lightning_helpers import make_probe


class _ColourGenderAge(torch.nn.Module):
    """96×96 → 3 outputs as genderage has: logits (max blue, max red) and age/100 = max green / 2."""

    def forward(self, x):
        top = x.amax((2, 3))  # insightface feeds RGB (it swaps the BGR image back)
        return torch.stack([top[:, 2], top[:, 0], top[:, 1] * 0.5], 1)


@pytest.fixture
def genderage(tmp_path):
    path = tmp_path / "genderage.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_ColourGenderAge(), (torch.zeros(1, 3, 96, 96),), str(path), input_names=["data"], output_names=["fc1"], dynamo=False)
    return path


def test_genderage_readings_through_insightface(genderage):
    estimator = GenderAgeEstimator(genderage, (3, 32, 32), names={"sex": "male"})
    assert isinstance(estimator, AttributeEstimator) and estimator.attributes == ("male", "age")
    assert type(estimator.model).__name__ == "Attribute"
    g = torch.Generator().manual_seed(0)
    images = torch.rand(8, 3, 1, 1, generator=g).expand(8, 3, 32, 32).clone()  # flat colours
    readings = estimator.estimate(images)
    pixels = (images[:, :, 0, 0] * 255).round()
    # insightface's Attribute: (pixel − 127.5) / 128, argmax of the two logits, age = round(100 · output)
    normalised = (pixels - 127.5) / 128.0
    assert readings["male"].tolist() == (normalised[:, 0] > normalised[:, 2]).long().tolist()
    assert readings["age"].tolist() == pytest.approx(torch.round(normalised[:, 1] * 0.5 * 100).tolist())
    with pytest.raises(DataFormatError, match=r"takes \(3, 32, 32\), got \(3, 16, 16\)"):
        estimator.estimate(torch.zeros(1, 3, 16, 16))


def test_genderage_registers_through_the_hook_and_bad_files_are_named(genderage, tmp_path, fresh_plugins):
    get_plugin_manager().register(GenderAgePlugin(genderage))
    name, estimator = find_estimator(make_probe(), "insightface-genderage")
    assert name == "insightface-genderage" and estimator.input_shape == (3, 16, 16)
    with pytest.raises(FileNotFoundError, match=r"no ONNX model at .*missing\.onnx\. frx never downloads"):
        GenderAgeEstimator(tmp_path / "missing.onnx", (3, 16, 16))
    recognition = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 112 * 112, 8)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(recognition, (torch.zeros(1, 3, 112, 112),), str(tmp_path / "rec.onnx"), dynamo=False)
    with pytest.raises(DataFormatError, match=r"rec\.onnx: insightface reads it as 'recognition', not a genderage model"):
        GenderAgeEstimator(tmp_path / "rec.onnx", (3, 16, 16))


def _rotation(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """Rz(roll) · Ry(yaw) · Rx(pitch), angles in degrees."""
    a, b, c = (math.radians(v) for v in (pitch, yaw, roll))
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


class _PosedLandmarks(torch.nn.Module):
    """192×192 → 3309 outputs as the 3D 68-point model has: the mean face shape turned by a known pose."""

    def __init__(self, pitch: float, yaw: float, roll: float) -> None:
        super().__init__()
        from insightface.data import get_object

        shape = get_object("meanshape_68.pkl")
        turned = (_rotation(pitch, yaw, roll) @ (shape - shape.mean(0)).T).T
        points = np.zeros((1103, 3), dtype=np.float32)
        points[-68:] = turned / np.abs(turned).max() * 0.5  # normalised coordinates, inside the crop
        self.register_buffer("points", torch.from_numpy(points.reshape(1, -1)))

    def forward(self, x):
        return self.points.expand(x.shape[0], -1) + 0.0 * x.mean((1, 2, 3))[:, None]


def test_head_pose_through_insightfaces_landmark_class(tmp_path, fresh_plugins):
    path = tmp_path / "1k3d68.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_PosedLandmarks(12.0, -25.0, 7.0), (torch.zeros(1, 3, 192, 192),), str(path),
                          input_names=["data"], output_names=["fc1"], dynamo=False)
    estimator = PoseEstimator(path, (3, 16, 16))
    assert type(estimator.model).__name__ == "Landmark" and estimator.attributes == ("pitch", "yaw", "roll")
    readings = estimator.estimate(torch.rand(2, 3, 16, 16))
    for name, want in (("pitch", 12.0), ("yaw", -25.0), ("roll", 7.0)):
        assert readings[name].tolist() == pytest.approx([want, want], abs=1e-3)
    get_plugin_manager().register(PosePlugin(path, names={"yaw": "head_yaw"}))
    name, found = find_estimator(make_probe(), "insightface-pose")
    assert found.attributes == ("pitch", "head_yaw", "roll")
    with pytest.raises(DataFormatError, match=r"insightface reads it as 'landmark_3d_68', not a genderage model"):
        GenderAgeEstimator(path, (3, 16, 16))
