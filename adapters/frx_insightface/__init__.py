"""frx for InsightFace: model-zoo recognition models as backbones, an ONNX exporter, and readers of the data formats face recognition uses."""

from frx_insightface.readers import (
    CelebAProbeSet,
    DataFormatError,
    VerificationProbeSet,
    read_celeba_labels,
    read_verification_bin,
)

__all__ = ["CelebAProbeSet", "DataFormatError", "VerificationProbeSet", "read_celeba_labels", "read_verification_bin"]
