"""InsightFace's attribute models as frx estimators (``frx_register_estimators``): genderage, and head pose from
the 3D 68-point landmark model.

Head pose: the landmark model (192×192 input, 3309 outputs) is routed by insightface to its ``Landmark``
class, whose ``get`` fits the 68 points to its mean 3D shape and gives ``pitch``, ``yaw`` and ``roll`` in
degrees (R = Rz(roll)·Ry(yaw)·Rx(pitch)).

The model is opened by ``insightface.model_zoo.get_model`` (which routes a 96×96-input, 3-output
graph to its ``Attribute`` class) and each face is read by that class's own ``get``: the whole image
is the face box, cropped and scaled as InsightFace crops a detected face, BGR, the model's mean and
std. ``sex`` is insightface's gender (0 female, 1 male) and ``age`` its age in years; ``names`` maps
them to the probe set's attribute names (CelebA calls sex ``male``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import torch

from frx_insightface.backbone import open_model
from frx_insightface.readers import DataFormatError
from frx_plugin.attributes import Attribute, AttributeSchema
from frx_plugin.hookspecs import hookimpl


class GenderAgeEstimator:
    """Reads sex and age with an InsightFace genderage model. ``input_shape``: the probe's images, any size."""

    def __init__(self, path: str | Path, input_shape: tuple[int, ...], names: Mapping[str, str] | None = None) -> None:
        path = Path(path).expanduser()
        model = open_model(path)
        self._check(model, path)
        self.model, self.path = model, path
        self.names = {**self.DEFAULT_NAMES, **dict(names or {})}
        self.attributes = tuple(self.names[k] for k in self.DEFAULT_NAMES)
        self.input_shape = tuple(int(v) for v in input_shape)
        self.accuracy: dict = {}  # unknown for a model frx did not train; the report's ceiling on real faces stands in

    DEFAULT_NAMES = {"sex": "sex", "age": "age"}
    #: What it reads, under insightface's names (``schema`` renames them as ``names`` says).
    READS: tuple[Attribute, ...] = (Attribute("sex", "binary", ("female", "male"), "identity", "insightface genderage: 0 female, 1 male"),
             Attribute("age", "continuous", None, None, "insightface genderage: age in years"))

    @property
    def schema(self) -> AttributeSchema:
        """The attributes it reads, with their kinds, under the probe set's names."""
        return AttributeSchema(replace(a, name=self.names[a.name]) for a in self.READS)

    def _check(self, model, path: Path) -> None:
        if getattr(model, "taskname", None) != "genderage":
            found = getattr(model, "taskname", None) or (type(model).__name__ if model is not None else "no model class")
            raise DataFormatError(f"{path}: insightface reads it as {found!r}, not a genderage model (96×96 input, 3 outputs)")

    def _read(self, image, face) -> list[float]:
        gender, years = self.model.get(image, face)
        return [int(gender), float(years)]

    def estimate(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """One reading per image by the insightface class's own ``get``, the whole image as the face box."""
        import numpy as np
        from insightface.app.common import Face

        if tuple(images.shape[1:]) != self.input_shape:
            raise DataFormatError(f"{self.path}: the estimator takes {self.input_shape}, got {tuple(images.shape[1:])}")
        readings = []
        # insightface works on BGR uint8 images, one face at a time
        pixels = (images.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).flip(1).permute(0, 2, 3, 1).numpy()
        for image in pixels:
            height, width = image.shape[:2]
            readings.append(self._read(np.ascontiguousarray(image), Face(bbox=np.array([0.0, 0.0, width, height]))))
        table = torch.tensor(readings, dtype=torch.float64).view(len(readings), len(self.DEFAULT_NAMES))
        out = {}
        for column, key in enumerate(self.DEFAULT_NAMES):
            out[self.names[key]] = table[:, column].to(torch.int64 if key == "sex" else torch.float32)
        return out


class PoseEstimator(GenderAgeEstimator):
    """Reads head pose (``pitch``, ``yaw``, ``roll`` in degrees) with an InsightFace 3D 68-point landmark model."""

    DEFAULT_NAMES = {"pitch": "pitch", "yaw": "yaw", "roll": "roll"}
    READS = tuple(Attribute(name, "continuous", None, "nuisance", f"insightface 3D landmarks: head {name} in degrees")
                  for name in DEFAULT_NAMES)

    def _check(self, model, path: Path) -> None:
        if getattr(model, "taskname", None) != "landmark_3d_68":
            found = getattr(model, "taskname", None) or (type(model).__name__ if model is not None else "no model class")
            raise DataFormatError(f"{path}: insightface reads it as {found!r}, not a 3D 68-point landmark model (192×192 input, 3309 outputs)")

    def _read(self, image, face) -> list[float]:
        self.model.get(image, face)
        return [float(v) for v in face["pose"]]


class GenderAgePlugin:
    """Registers a genderage model file as the ``insightface-genderage`` estimator, for every probe set.

    ``get_plugin_manager().register(GenderAgePlugin("genderage.onnx", names={"sex": "male"}))``.
    """

    estimator, name, reads = GenderAgeEstimator, "insightface-genderage", "sex, age"

    def __init__(self, path: str | Path, names: Mapping[str, str] | None = None) -> None:
        self.path, self.names = Path(path), dict(names or {})

    def _factory(self, probe):
        shape = tuple(int(v) for v in probe.images(torch.arange(1)).shape[1:])
        return self.estimator(self.path, shape, self.names)

    @hookimpl
    def frx_register_estimators(self, register) -> None:
        register(self.name, self._factory, f"InsightFace model {self.path} ({self.reads})")


class PosePlugin(GenderAgePlugin):
    """Registers a 3D 68-point landmark model file as the ``insightface-pose`` estimator (pitch, yaw, roll)."""

    estimator, name, reads = PoseEstimator, "insightface-pose", "pitch, yaw, roll"
