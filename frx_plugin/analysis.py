"""One analysis pass: embed a probe set with a model, recover attributes, measure verification.

Framework-free; the adapters decide when a pass runs and where its numbers go.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch

from frx_plugin.plugins import get_plugin_manager
from frx_plugin.probe import ProbeSet
from frx_plugin.recovery import AnalysisError
from frx_plugin.report import Report
from frx_plugin.verification import listed_pair_verification, verification

ON_ERROR = ("warn", "raise")


@dataclass(frozen=True)
class AnalysisConfig:
    """Options of an analysis pass (validated on construction)."""

    n_folds: int = 5
    n_bootstrap: int = 200
    seed: int = 0
    fmr: float = 1e-3
    batch_size: int = 256
    head: str = "ridge"
    C: float = 1.0

    def __post_init__(self) -> None:
        from frx_plugin.recovery import HEADS

        if self.head not in HEADS:
            raise ValueError(f"head must be one of {list(HEADS)}, got {self.head!r}")
        if not isinstance(self.C, (int, float)) or isinstance(self.C, bool) or not (0.0 < float(self.C) < math.inf):
            raise ValueError(f"C (the inverse logistic penalty) must be a positive number, got {self.C!r}")
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


def model_device(model: Any) -> torch.device:
    """The device of the model's first parameter (the CPU for a model without torch parameters)."""
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def hook_embedder(model: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """images → L2-normalised embeddings float32 on the CPU through the ``frx_embed`` hook, without gradients.

    The model is put in eval mode for each call and restored afterwards.
    """
    hook = get_plugin_manager().hook.frx_embed
    device = model_device(model)

    @torch.no_grad()
    def embed(images: torch.Tensor) -> torch.Tensor:
        was_training = getattr(model, "training", False)
        if was_training:
            model.eval()
        try:
            return hook(model=model, images=images.to(device)).detach().to("cpu", torch.float32)
        finally:
            if was_training:
                model.train()

    return embed


def embed_probe_set(model: Any, probe: ProbeSet, indices: torch.Tensor | None = None, batch_size: int = 256,
                    progress: Callable[[int, int, str], None] | None = None) -> torch.Tensor:
    """Embeddings ``(len(indices), D)`` float32 on the CPU, through the ``frx_embed`` hook (:func:`hook_embedder`).

    ``progress(done, total, "embedding")`` after each batch when given.
    """
    if indices is None:
        indices = torch.arange(len(probe))
    embed = hook_embedder(model)
    chunks, done = [], 0
    for chunk, images in probe.batches(indices, batch_size):
        chunks.append(embed(images))
        done += chunk.numel()
        if progress is not None:
            progress(done, indices.numel(), "embedding")
    return torch.cat(chunks) if chunks else torch.empty(0, 0)


def probe_leakage(
    embeddings: torch.Tensor,
    probe: ProbeSet,
    config: AnalysisConfig = AnalysisConfig(),
    indices: torch.Tensor | None = None,
    distributed: bool = False,
) -> Report:
    """Leakage of every attribute of ``probe`` from the embeddings of the samples ``indices``.

    The streaming analysis (:func:`frx_plugin.streaming.analyze_stream`): with
    ``distributed=True`` each process passes the embeddings of its own disjoint shard and
    the statistics are summed across processes, so every process gets the result of the
    whole probe set (every process must call this: it runs collectives).
    """
    from frx_plugin.streaming import analyze_stream

    if indices is None:
        indices = torch.arange(len(probe))
    labels = {name: value[indices] for name, value in probe.labels.items()}
    masked = [a.name for a in probe.schema if bool(a.missing_mask(probe.labels[a.name]).any())]
    return analyze_stream(
        lambda: [(embeddings, probe.identity[indices], labels)],
        probe.identity,
        probe.schema,
        n_folds=config.n_folds,
        n_bootstrap=config.n_bootstrap,
        seed=config.seed,
        sync_on_compute=distributed,
        masked_attributes=masked,
    )


def analyze_probe(embeddings: torch.Tensor, probe: ProbeSet, config: AnalysisConfig = AnalysisConfig()) -> Report:
    """Leakage of every attribute of ``probe`` and verification on its pairs, from the embeddings of all its samples.

    A probe set that lists its pairs (``probe.pairs``, as a verification file does) is verified on
    those pairs only; otherwise on all pairs.
    """
    report = probe_leakage(embeddings, probe, config)
    listed = getattr(probe, "pairs", None)
    if listed is not None:
        report.verification = listed_pair_verification(embeddings, probe.identity, listed, fmr=config.fmr)
    else:
        report.verification = verification(embeddings, probe.identity, fmr=config.fmr)
    return report


#: Options of the counterfactual part of a pass.
COUNTERFACTUAL_PATHS = ("auto", "exact", "latent", "off")


def counterfactual_rows(n: int, samples: int) -> torch.Tensor:
    """The probe rows whose counterfactuals a pass makes: ``samples`` spread evenly over ``n``."""
    from frx_plugin.counterfactual import spread

    return spread(n, samples)


def generator_attributes(probe: ProbeSet, generator: Any) -> tuple[list[str], list[str]]:
    """(attributes the generator can change, attributes of the probe set it cannot)."""
    controls = set(generator.attributes)
    return [n for n in probe.schema.names if n in controls], [n for n in probe.schema.names if n not in controls]


def choose_counterfactual_path(probe: ProbeSet, path: str) -> tuple[str, Any]:
    """("exact", generator) or ("latent", None) for ``path`` in auto / exact / latent."""
    from frx_plugin.counterfactual import find_generator, require_generator

    if path == "exact":
        return "exact", require_generator(probe)[1]
    if path == "auto":
        found = find_generator(probe)
        if found is not None:
            return "exact", found[1]
    return "latent", None


def counterfactual_embedder(
    model: Any, z: torch.Tensor, labels: Any, schema: Any, report: Report, chosen: str, generator: Any = None,
    probe: Any = None, latent_mode: str = "conditional", batch_size: int = 256,
) -> tuple[Any, list[str] | None, list[str]]:
    """``(embed, attributes, unchanged)`` for counterfactuals on the ``chosen`` path ("exact" or "latent").

    Exact: ``model`` embeds the faces ``generator`` re-renders; ``attributes`` are those it controls
    and ``unchanged`` the probe set's others. Latent: the embeddings ``z`` move along the probe heads
    of ``report`` (``latent_mode``, :func:`frx_plugin.counterfactual.latent_model`); ``attributes``
    is ``None`` (all of them).
    """
    from frx_plugin.counterfactual import exact_embedder, latent_embedder, latent_model

    if chosen == "exact":
        attributes, unchanged = generator_attributes(probe, generator)
        return exact_embedder(model, generator, batch_size), attributes, unchanged
    heads = latent_model(z, labels, schema, report.tensors["probe_directions"], report.tensors["probe_bias"],
                         mode=latent_mode, held_out={a.name: a.value for a in report.leakage})
    return latent_embedder(heads, z, labels), None, []


def probe_decision_errors(embeddings: torch.Tensor, probe: ProbeSet, report: Report, fmr: float):
    """The errors of the verification decision at ``fmr`` (:class:`~frx_plugin.verification.DecisionErrors`).

    On every pair of the probe set, or on its listed pairs (``probe.pairs``, a verification file),
    with τ from ``report.verification``. Too few impostor pairs for τ at ``fmr`` is an
    :class:`AnalysisError` that says how many are needed.
    """
    from frx_plugin.counterfactual import pair_errors
    from frx_plugin.verification import decision_errors

    listed = getattr(probe, "pairs", None)
    if listed is None:
        return decision_errors(embeddings, probe.identity, fmr, known=report.verification)
    known = report.verification
    if known is None or known.fmr != float(fmr):
        known = listed_pair_verification(embeddings, probe.identity, listed, fmr)
    if known.impostor_pairs * float(fmr) < 1.0:
        raise AnalysisError(
            f"{probe.source}: {known.impostor_pairs} listed impostor pairs are too few to set a threshold at FMR {fmr:g}; "
            f"pass a larger fmr (at least {1.0 / known.impostor_pairs:.2g})"
        )
    return pair_errors(listed, embeddings, probe.identity, known.threshold, known)


def counterfactual_measures(
    embeddings: torch.Tensor,
    probe: ProbeSet,
    report: Report,
    config: AnalysisConfig,
    embed: Any,
    *,
    path: str,
    significance_samples: int = 128,
    max_error_pairs: int = 16,
    attributes: list[str] | None = None,
) -> list:
    """Fill ``report.significance`` and ``report.error_attribution`` (DESIGN.md §2); return the explanations.

    ``embeddings``: all N probe embeddings (L2-normalised); ``embed(rows, attribute, values)``
    makes changed embeddings (:func:`frx_plugin.counterfactual.exact_embedder` or
    :func:`~frx_plugin.counterfactual.latent_embedder`); ``path`` names which, for the report.
    The errors are those of the verification decision at ``config.fmr`` (``report.verification``
    is reused); at most ``max_error_pairs`` of each kind are explained. ``attributes``: the ones to
    change (default all; on the exact path, those the generator controls).
    """
    from frx_plugin.counterfactual import error_attribution, explain_errors, identity_significance

    rows = counterfactual_rows(len(probe), significance_samples)
    names = list(probe.schema.names) if attributes is None else [n for n in probe.schema.names if n in attributes]
    significance = identity_significance(
        embeddings, probe.identity, probe.schema, probe.labels, embed, rows, n_bootstrap=config.n_bootstrap,
        seed=config.seed, attributes=names,
    )
    report.significance = {k: {"value": e.value, "low": e.low, "high": e.high} for k, e in significance.items()}
    report.counterfactuals = path
    try:
        errors = probe_decision_errors(embeddings, probe, report, config.fmr)
    except AnalysisError as exc:  # too few impostor pairs for τ: significance stands, attribution cannot
        report.warnings.append(f"error attribution skipped: {exc}")
        return []
    explanations = explain_errors(errors, embeddings, probe.schema, probe.labels, embed, max_pairs=max_error_pairs, attributes=names)
    report.error_attribution = error_attribution(explanations, names)
    return explanations


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
    for name, estimate in report.significance.items():
        out[f"frx/significance/{name}"] = estimate["value"]
        out[f"frx/significance/{name}/low"] = estimate["low"]
        out[f"frx/significance/{name}/high"] = estimate["high"]
    for kind, shares in report.error_attribution.items():
        prefix = "frx/errors" if kind == "all" else f"frx/errors/{kind}"
        for name, share in shares.items():
            out[f"{prefix}/{name}"] = share
    if report.recovery is not None:
        from frx_plugin.two_stage import recovery_scalars

        out.update(recovery_scalars(report.recovery))
    return {k: float(v) for k, v in out.items() if v is not None and not math.isnan(float(v))}
