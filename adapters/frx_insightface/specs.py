"""The ``insightface:`` specs of the command line: ``--backbone insightface:…`` and ``--estimator insightface:…``.

The argument is an .onnx file, or a model pack: a name under ``<root>/models`` (insightface's own
``~/.insightface`` by default) or a folder. Nothing is ever downloaded.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from frx_insightface.backbone import InsightFaceBackbone, load_insightface_backbone, open_model
from frx_insightface.estimators import GenderAgeEstimator, PoseEstimator
from frx_insightface.packs import DEFAULT_ROOT, pack_folder, pack_models
from frx_insightface.readers import DataFormatError
from frx_plugin.estimators import CombinedEstimator

#: insightface task name → the frx estimator that reads it.
ESTIMATORS = {"genderage": GenderAgeEstimator, "landmark_3d_68": PoseEstimator}


def _channel_values(argument: str, name: str, value: Any) -> float | tuple[float, float, float] | None:
    """A spec's ``mean=``/``std=``: a number, or three numbers joined by ``/`` (``mean=123.7/116.3/103.5``)."""
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return value
    parts = str(value).split("/")
    try:
        numbers = tuple(float(part) for part in parts)
    except ValueError:
        numbers = ()
    if len(numbers) != 3 or not all(math.isfinite(v) for v in numbers):
        raise ValueError(f"backbone insightface:{argument}: option {name!r} must be a number or three numbers joined by '/' "
                         f"(one per channel, e.g. {name}=127.5/127.5/127.5), got {value!r}")
    return numbers


def open_backbone_spec(argument: str, flip: bool = False, root: str = DEFAULT_ROOT, mean: Any = None, std: Any = None,
                       channels: str = "rgb") -> InsightFaceBackbone:
    """``insightface:FILE.onnx`` or ``insightface:PACK``: the recognition model, embedding the InsightFace way.

    ``mean=``/``std=`` (a number, or three joined by ``/``) override the normalisation insightface
    detects in the graph; ``channels=bgr`` feeds the model BGR instead of RGB.
    """
    mean, std = _channel_values(argument, "mean", mean), _channel_values(argument, "std", std)
    channels = str(channels).lower()
    if channels not in ("rgb", "bgr"):
        raise ValueError(f"backbone insightface:{argument}: option 'channels' must be rgb or bgr, got {channels!r}")
    options = {"flip": bool(flip), "mean": mean, "std": std, "channels": channels}
    if argument.endswith(".onnx"):
        return load_insightface_backbone(argument, **options)
    folder = pack_folder(argument, root)
    models = pack_models(folder)
    if "recognition" not in models:
        raise DataFormatError(f"{folder}: the model pack holds no recognition model (insightface found: {sorted(models) or 'none'})")
    path, model = models["recognition"]
    return InsightFaceBackbone(model, path, **options)


def _names(options: dict[str, Any], estimator: type[GenderAgeEstimator]) -> dict[str, str]:
    return {k: str(v) for k, v in options.items() if k in estimator.DEFAULT_NAMES}


def open_estimator_spec(argument: str, probe: Any, root: str = DEFAULT_ROOT, **names: Any) -> Any:
    """``insightface:FILE.onnx`` (genderage or 3D landmarks, as insightface routes it) or ``insightface:PACK`` (both).

    ``names`` renames what it reads to the probe set's attributes (``sex=male``); an unknown key is
    an error listing the known ones.
    """
    known = sorted({k for cls in ESTIMATORS.values() for k in cls.DEFAULT_NAMES})
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"estimator insightface:{argument}: unknown option(s) {unknown}; rename with {known} (or root=)")
    shape = tuple(int(v) for v in probe.images(torch.arange(1)).shape[1:])
    if argument.endswith(".onnx"):
        path = Path(argument).expanduser()
        task = getattr(open_model(path), "taskname", None)
        if task not in ESTIMATORS:
            raise DataFormatError(f"{path}: insightface reads it as {task!r}; an estimator is a genderage or a 3D 68-point landmark model")
        cls = ESTIMATORS[task]
        return cls(path, shape, _names(names, cls))
    folder = pack_folder(argument, root)
    found = pack_models(folder)
    chosen = [cls(found[task][0], shape, _names(names, cls)) for task, cls in ESTIMATORS.items() if task in found]
    if not chosen:
        raise DataFormatError(f"{folder}: the model pack holds no genderage or 3D landmark model (insightface found: {sorted(found) or 'none'})")
    return chosen[0] if len(chosen) == 1 else CombinedEstimator(chosen)
