"""frx for InsightFace: model-zoo recognition models as backbones, an ONNX exporter, and readers of the data formats face recognition uses.

The names are loaded on first use, so that the ``frx`` entry point (:mod:`frx_insightface.plugin`) does
not import the readers until a command needs them.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["CelebAProbeSet", "DataFormatError", "VerificationProbeSet", "read_celeba_labels", "read_verification_bin"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        value = getattr(importlib.import_module("frx_insightface.readers"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
