"""InsightFace's attribute model (genderage) as an frx estimator (``frx_register_estimators``).

The model is opened by ``insightface.model_zoo.get_model`` (which routes a 96×96-input, 3-output
graph to its ``Attribute`` class) and each face is read by that class's own ``get``: the whole image
is the face box, cropped and scaled as InsightFace crops a detected face, BGR, the model's mean and
std. ``sex`` is insightface's gender (0 female, 1 male) and ``age`` its age in years; ``names`` maps
them to the probe set's attribute names (CelebA calls sex ``male``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from frx_insightface.backbone import open_model
from frx_insightface.readers import DataFormatError
from frx_plugin.hookspecs import hookimpl


class GenderAgeEstimator:
    """Reads sex and age with an InsightFace genderage model. ``input_shape``: the probe's images, any size."""

    def __init__(self, path: str | Path, input_shape: tuple[int, int, int], names: Mapping[str, str] | None = None) -> None:
        path = Path(path).expanduser()
        model = open_model(path)
        if getattr(model, "taskname", None) != "genderage":
            found = getattr(model, "taskname", None) or (type(model).__name__ if model is not None else "no model class")
            raise DataFormatError(f"{path}: insightface reads it as {found!r}, not a genderage model (96×96 input, 3 outputs)")
        self.model, self.path = model, path
        self.names = {"sex": "sex", "age": "age", **dict(names or {})}
        self.attributes = (self.names["sex"], self.names["age"])
        self.input_shape = tuple(int(v) for v in input_shape)
        self.accuracy: dict = {}  # unknown for a model frx did not train; the report's ceiling on real faces stands in

    def estimate(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        import numpy as np
        from insightface.app.common import Face

        if tuple(images.shape[1:]) != self.input_shape:
            raise DataFormatError(f"{self.path}: the estimator takes {self.input_shape}, got {tuple(images.shape[1:])}")
        sex, age = [], []
        # insightface works on BGR uint8 images, one face at a time
        pixels = (images.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).flip(1).permute(0, 2, 3, 1).numpy()
        for image in pixels:
            height, width = image.shape[:2]
            gender, years = self.model.get(np.ascontiguousarray(image), Face(bbox=np.array([0.0, 0.0, width, height])))
            sex.append(int(gender))
            age.append(float(years))
        return {self.names["sex"]: torch.tensor(sex, dtype=torch.int64), self.names["age"]: torch.tensor(age, dtype=torch.float32)}


class GenderAgePlugin:
    """Registers a genderage model file as the ``insightface-genderage`` estimator, for every probe set.

    ``get_plugin_manager().register(GenderAgePlugin("genderage.onnx", names={"sex": "male"}))``.
    """

    def __init__(self, path: str | Path, names: Mapping[str, str] | None = None) -> None:
        self.path, self.names = Path(path), dict(names or {})

    def _factory(self, probe):
        shape = tuple(int(v) for v in probe.images(torch.arange(1)).shape[1:])
        return GenderAgeEstimator(self.path, shape, self.names)

    @hookimpl
    def frx_register_estimators(self, register) -> None:
        register("insightface-genderage", self._factory, f"InsightFace genderage model {self.path} (sex, age)")
