"""Every exception frx raises on purpose; a leaf module that imports nothing of frx.

Each is a ``ValueError`` (bad input) or a ``RuntimeError`` (a plugin or a run that went wrong), so a
caller may catch the built-in kinds; every message names the file, field, attribute or option at fault.
"""

from __future__ import annotations


class AnalysisError(ValueError):
    """Input that an analysis pass cannot work on; the message names the attribute or field."""


class SchemaError(ValueError):
    """An attribute definition or a label tensor that does not fit its schema."""


class EmbeddingSetError(ValueError):
    """An embedding-set file that cannot be read as one; the message names the file and the field."""


class PluginError(RuntimeError):
    """A plugin or registry problem (unknown name, duplicate registration, failed load)."""


class CounterfactualError(AnalysisError):
    """A counterfactual that cannot be made (no generator, an attribute it cannot change, …)."""


class EstimatorError(AnalysisError):
    """An estimator that cannot be used as asked (wrong input shape, broken output, failed training)."""


class ModelInputError(AnalysisError):
    """Probe images a model cannot take (another image size or channel count than it was built for)."""


class DecoderError(AnalysisError):
    """A decoder that cannot be used as asked (wrong shapes, bad options)."""


class DecoderDiverged(DecoderError):
    """A decoder whose training loss became NaN or infinite; its weights are left as before the fit."""


class CheckpointError(ValueError):
    """A weights file that cannot be read, or that does not fit the model it is loaded into; the message names
    the file and the missing, unexpected or mis-shaped keys."""


class OutputError(ValueError):
    """An output location that cannot take a command's results: a file where a folder is wanted, a path
    under a file, a place that cannot be written, or one that holds an earlier run's results."""


__all__ = [
    "AnalysisError", "CheckpointError", "CounterfactualError", "DecoderDiverged", "DecoderError", "EmbeddingSetError", "EstimatorError",
    "ModelInputError", "OutputError", "PluginError", "SchemaError",
]
