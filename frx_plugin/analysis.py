"""One analysis pass: embed a probe set with a model, recover attributes, measure verification.

Framework-free; the adapters decide when a pass runs and where its numbers go.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from frx_plugin.plugins import get_plugin_manager
from frx_plugin.probe import ProbeSet
from frx_plugin.recovery import analyze_embeddings
from frx_plugin.report import Report
from frx_plugin.verification import verification

ON_ERROR = ("warn", "raise")


@dataclass(frozen=True)
class AnalysisConfig:
    """Options of an analysis pass (validated on construction)."""

    n_folds: int = 5
    n_bootstrap: int = 200
    seed: int = 0
    fmr: float = 1e-3
    batch_size: int = 256

    def __post_init__(self) -> None:
        if not isinstance(self.n_folds, int) or self.n_folds < 2:
            raise ValueError(f"n_folds must be an integer of at least 2, got {self.n_folds!r}")
        if not isinstance(self.n_bootstrap, int) or self.n_bootstrap < 0:
            raise ValueError(f"n_bootstrap must be a non-negative integer, got {self.n_bootstrap!r}")
        if not (isinstance(self.fmr, float) and 0.0 < self.fmr < 1.0):
            raise ValueError(f"fmr must be a float in (0, 1), got {self.fmr!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


@torch.no_grad()
def embed_probe_set(model: Any, probe: ProbeSet, indices: torch.Tensor | None = None, batch_size: int = 256) -> torch.Tensor:
    """Embeddings ``(len(indices), D)`` float32 on the CPU, through the ``frx_embed`` hook.

    The model is put in eval mode for the pass and restored afterwards.
    """
    if indices is None:
        indices = torch.arange(len(probe))
    hook = get_plugin_manager().hook.frx_embed
    device = _model_device(model)
    was_training = getattr(model, "training", None)
    if was_training:
        model.eval()
    try:
        chunks = []
        for _, images in probe.batches(indices, batch_size):
            z = hook(model=model, images=images.to(device))
            chunks.append(z.detach().to("cpu", torch.float32))
    finally:
        if was_training:
            model.train()
    if not chunks:
        return torch.empty(0, 0)
    return torch.cat(chunks)


def analyze_probe(embeddings: torch.Tensor, probe: ProbeSet, config: AnalysisConfig = AnalysisConfig()) -> Report:
    """Leakage of every attribute of ``probe`` and verification on its pairs, from given embeddings."""
    report = analyze_embeddings(
        embeddings,
        probe.identity,
        probe.labels,
        probe.schema,
        n_folds=config.n_folds,
        n_bootstrap=config.n_bootstrap,
        seed=config.seed,
    )
    report.verification = verification(embeddings, probe.identity, fmr=config.fmr)
    return report


def scalar_metrics(report: Report) -> dict[str, float]:
    """The report's numbers under the names loggers use: ``frx/leakage/<attribute>`` and bounds, ``frx/verification/…``."""
    out: dict[str, float] = {}
    for item in report.leakage:
        out[f"frx/leakage/{item.name}"] = item.leakage
        out[f"frx/leakage/{item.name}/low"] = item.leakage_low
        out[f"frx/leakage/{item.name}/high"] = item.leakage_high
        out[f"frx/{item.metric}/{item.name}"] = item.value
    if report.verification is not None:
        out[f"frx/verification/tar_at_fmr_{report.verification.fmr:g}"] = report.verification.tar
    return {k: float(v) for k, v in out.items() if not math.isnan(float(v))}
