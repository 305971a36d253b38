"""InsightFace's genderage model as an frx estimator: a small ONNX file of the real shapes, read by insightface's own class."""

from __future__ import annotations

import warnings

import pytest
import torch

from frx_insightface.estimators import GenderAgeEstimator, GenderAgePlugin
from frx_insightface.readers import DataFormatError
from frx_plugin.estimators import AttributeEstimator, find_estimator
from frx_plugin.plugins import get_plugin_manager
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
