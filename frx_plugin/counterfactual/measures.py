"""The counterfactual part of an analysis pass: which path, which errors, and the measures.

Identity significance S_k and error attribution of the verification decision's errors, from
changed embeddings made on the exact path (a generator re-renders the faces, the model embeds
them), the decoded path (the pass's decoders render edited latent codes, the model embeds them:
:mod:`frx_plugin.counterfactual.decoded`) or the latent path (z moves along the probe heads).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from frx_plugin.counterfactual.explanations import error_attribution, explain_errors, pair_errors, spread
from frx_plugin.counterfactual.latent import counterfactual_heads, latent_embedder, latent_model
from frx_plugin.counterfactual.sharded import sharded_exact_embedder
from frx_plugin.counterfactual.significance import exact_embedder, identity_significance
from frx_plugin.errors import AnalysisError, CounterfactualError
from frx_plugin.plugins import find_generator, require_generator
from frx_plugin.probe import ProbeSet
from frx_plugin.report import Report
from frx_plugin.verification import decision_errors, listed_pair_verification

if TYPE_CHECKING:
    from frx_plugin.config import AnalysisConfig


def counterfactual_rows(n: int, samples: int) -> torch.Tensor:
    """The probe rows whose counterfactuals a pass makes: ``samples`` spread evenly over ``n``."""
    return spread(n, samples)


def generator_attributes(probe: ProbeSet, generator: Any) -> tuple[list[str], list[str]]:
    """(attributes the generator can change, attributes of the probe set it cannot)."""
    controls = set(generator.attributes)
    return [n for n in probe.schema.names if n in controls], [n for n in probe.schema.names if n not in controls]


def choose_counterfactual_path(probe: ProbeSet, path: str, decoder: bool = False) -> tuple[str, Any]:
    """("exact", generator), ("decoded", None) or ("latent", None) for ``path`` in auto / exact / decoded / latent.

    ``decoder``: whether the run trains decoders (the two stages). "auto" takes exact where a generator
    renders the probe set, else decoded where there is a decoder, else latent; "decoded" without a
    decoder is a :class:`~frx_plugin.errors.CounterfactualError` that names the option.
    """
    if path == "exact":
        return "exact", require_generator(probe)[1]
    if path == "auto":
        found = find_generator(probe)
        if found is not None:
            return "exact", found[1]
    if path == "decoded" or (path == "auto" and decoder):
        if not decoder:
            raise CounterfactualError(f"counterfactuals 'decoded' render with the decoders of the two stages, and this run has none "
                                      f"for {probe.source}: give it a decoder (--two-stage on frx analyze and frx benchmark, "
                                      "--decoder SPEC on frx explain, two_stage= in Python)")
        return "decoded", None
    return "latent", None


def counterfactual_embedder(
    model: Any, z: torch.Tensor, labels: Any, schema: Any, report: Report, chosen: str, generator: Any = None,
    probe: Any = None, latent_mode: str = "conditional", batch_size: int = 256, collectives: Any = None, two_stage: Any = None,
    identity: Any = None, seed: int = 0,
) -> tuple[Any, list[str] | None, list[str]]:
    """``(embed, attributes, unchanged)`` for counterfactuals on the ``chosen`` path ("exact", "decoded" or "latent").

    Exact: ``model`` embeds the faces ``generator`` re-renders (each process of ``collectives`` its
    share of them, :func:`~frx_plugin.counterfactual.sharded.sharded_exact_embedder`); ``attributes``
    are those it controls and ``unchanged`` the probe set's others. Latent: the embeddings ``z`` move
    along heads fitted for the moves (``latent_mode``, :func:`~frx_plugin.counterfactual.latent.counterfactual_heads`,
    :func:`~frx_plugin.counterfactual.latent.latent_model`; ``identity``: the rows' identities, default
    ``probe.identity``; ``seed``: of the heads' inner folds);
    ``attributes`` is ``None`` (all of them). Decoded: the decoders ``two_stage`` trained in this pass render
    edited latent codes (:func:`~frx_plugin.counterfactual.decoded.decoded_embedder`); all attributes.
    """
    if chosen == "decoded":
        from frx_plugin.counterfactual.decoded import decoded_embedder

        return decoded_embedder(model, two_stage, z, labels, schema, batch_size, collectives), None, []
    if chosen == "exact":
        attributes, unchanged = generator_attributes(probe, generator)
        if collectives is None:
            return exact_embedder(model, generator, batch_size), attributes, unchanged
        return sharded_exact_embedder(model, generator, batch_size, collectives, z.shape[1], z.device), attributes, unchanged
    identity = identity if identity is not None else probe.identity
    directions, bias, held_out = counterfactual_heads(z, identity, labels, schema, seed=seed)
    heads = latent_model(z, labels, schema, directions, bias, mode=latent_mode, held_out=held_out)
    return latent_embedder(heads, z, labels), None, []


def probe_decision_errors(embeddings: torch.Tensor, probe: ProbeSet, report: Report, fmr: float):
    """The errors of the verification decision at ``fmr`` (:class:`~frx_plugin.verification.DecisionErrors`).

    On every pair of the probe set, or on its listed pairs (``probe.pairs``, a verification file),
    with τ from ``report.verification``. Too few impostor pairs for τ at ``fmr`` is an
    :class:`AnalysisError` that says how many are needed.
    """
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
    """Fill ``report.significance`` (identity significance S_k) and ``report.error_attribution``; return the explanations.

    ``embeddings``: all N probe embeddings (L2-normalised); ``embed(rows, attribute, values)``
    makes changed embeddings (:func:`~frx_plugin.counterfactual.significance.exact_embedder` or
    :func:`~frx_plugin.counterfactual.latent.latent_embedder`); ``path`` names which, for the report.
    The errors are those of the verification decision at ``config.fmr`` (``report.verification``
    is reused); at most ``max_error_pairs`` of each kind are explained. ``attributes``: the ones to
    change (default all; on the exact path, those the generator controls).
    """
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
