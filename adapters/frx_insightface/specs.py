"""The ``insightface:`` specs of the command line: ``--backbone insightface:…`` and ``--estimator insightface:…``.

The argument is an .onnx file, or a model pack: a name under ``<root>/models`` (insightface's own
``~/.insightface`` by default) or a folder. Nothing is ever downloaded.
"""

from __future__ import annotations

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


def open_backbone_spec(argument: str, flip: bool = False, root: str = DEFAULT_ROOT) -> InsightFaceBackbone:
    """``insightface:FILE.onnx`` or ``insightface:PACK``: the recognition model, embedding the InsightFace way."""
    if argument.endswith(".onnx"):
        return load_insightface_backbone(argument, flip=bool(flip))
    folder = pack_folder(argument, root)
    models = pack_models(folder)
    if "recognition" not in models:
        raise DataFormatError(f"{folder}: the model pack holds no recognition model (insightface found: {sorted(models) or 'none'})")
    path, model = models["recognition"]
    return InsightFaceBackbone(model, path, flip=bool(flip))


def _names(options: dict[str, Any], estimator: type) -> dict[str, str]:
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
