"""frx for InsightFace: readers of the data formats face recognition uses (more of the adapter comes in issue 6)."""

from frx_insightface.readers import (
    CelebAProbeSet,
    DataFormatError,
    VerificationProbeSet,
    read_celeba_labels,
    read_verification_bin,
)

__all__ = ["CelebAProbeSet", "DataFormatError", "VerificationProbeSet", "read_celeba_labels", "read_verification_bin"]
