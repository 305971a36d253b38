"""InsightFace model packs (``buffalo_l`` and the like), opened from disk and never downloaded.

insightface's ``FaceAnalysis(name=...)`` downloads a pack it cannot find under ``~/.insightface/models``;
frx never lets it: :func:`pack_folder` finds the folder or raises an error that names the path looked
at and how to get the pack, and :func:`face_analysis` hands ``FaceAnalysis`` the folder itself, which it
then reads without looking anything up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from frx_insightface.backbone import open_model

#: Where insightface keeps its packs (its own default ``root``); packs sit in ``<root>/models/<name>``.
DEFAULT_ROOT = "~/.insightface"


def pack_folder(name: str | Path, root: str | Path = DEFAULT_ROOT) -> Path:
    """The folder of model pack ``name`` (a pack name under ``<root>/models``, or a folder path), holding .onnx files.

    A missing pack, or a folder without .onnx files, is a ``FileNotFoundError`` naming the path.
    """
    direct = Path(name).expanduser()
    folder = direct if direct.is_dir() else Path(root).expanduser() / "models" / str(name)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no InsightFace model pack {str(name)!r} at {folder}. frx never downloads models: unzip the pack "
            f"(e.g. buffalo_l.zip from github.com/deepinsight/insightface/releases/tag/model-zoo) into {folder}, "
            "or pass the pack's folder"
        )
    if not any(folder.glob("*.onnx")):
        raise FileNotFoundError(f"{folder}: this InsightFace model pack folder holds no .onnx files")
    return folder


def pack_models(folder: str | Path) -> dict[str, tuple[Path, Any]]:
    """``{taskname: (file, model)}`` for the .onnx files of a pack folder that insightface routes to a model (first file per task, by name)."""
    found: dict[str, tuple[Path, Any]] = {}
    for path in sorted(Path(folder).glob("*.onnx")):
        model = open_model(path)
        task = getattr(model, "taskname", None)
        if task is not None and task not in found:
            found[task] = (path, model)
    return found


def face_analysis(name: str | Path = "buffalo_l", root: str | Path = DEFAULT_ROOT, **kwargs: Any) -> Any:
    """insightface's ``FaceAnalysis`` for a pack that is on disk; never downloads (``FileNotFoundError`` instead).

    ``kwargs`` go to ``FaceAnalysis`` (``allowed_modules``, ``providers``; the CPU by default).
    """
    from insightface.app import FaceAnalysis

    folder = pack_folder(name, root)
    kwargs.setdefault("providers", ["CPUExecutionProvider"])
    return FaceAnalysis(name=str(folder), root=str(Path(root).expanduser()), **kwargs)
