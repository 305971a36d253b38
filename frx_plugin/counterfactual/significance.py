"""Identity significance S_k, and the exact embedder (a generator re-renders, the model embeds)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from frx_plugin.attributes import AttributeSchema
from frx_plugin.counterfactual.edits import edit_scale, edit_values
from frx_plugin.errors import CounterfactualError
from frx_plugin.interfaces import AttributeGenerator, Embedder
from frx_plugin.leakage import MetricEstimate, bootstrap_estimate

def exact_embedder(model: Any, generator: AttributeGenerator, batch_size: int = 256) -> Embedder:
    """``embed(rows, attribute, values)`` on the exact path: re-render with the generator, embed with the model."""
    from frx_plugin.model import hook_embedder

    embed_images = hook_embedder(model)

    def embed(rows: torch.Tensor, attribute: str, values: torch.Tensor) -> torch.Tensor:
        if attribute not in generator.attributes:
            raise CounterfactualError(f"the generator cannot change attribute {attribute!r}; it controls {list(generator.attributes)}")
        out = []
        for start in range(0, rows.numel(), batch_size):
            part = slice(start, start + batch_size)
            with torch.no_grad():
                images = generator.counterfactual(rows[part], attribute, values[part])
            out.append(embed_images(images))
        return torch.cat(out) if out else torch.empty(0, 0)

    return embed


# --------------------------------------------------------------------------- identity significance


def impostor_mean_cosine(z: torch.Tensor, identity: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean cosine over ordered impostor pairs, per row of ``weights`` (R, n_identities).

    Σ_{id(i)≠id(j)} w_i w_j z_i·z_j = ‖Σ_id W_id Z_id‖² − Σ_id W_id²‖Z_id‖², Z_id the sum of an
    identity's embeddings; the pair count likewise from the counts.
    """
    ids, index = torch.unique(identity, return_inverse=True)
    sums = torch.zeros(ids.numel(), z.shape[1], dtype=torch.float64).index_add_(0, index, z.to(torch.float64))
    counts = torch.bincount(index, minlength=ids.numel()).to(torch.float64)
    total = weights @ sums  # (R, D)
    cross = (total * total).sum(1) - (weights**2) @ (sums * sums).sum(1)
    pairs = (weights @ counts) ** 2 - (weights**2) @ (counts**2)
    return cross / pairs.clamp_min(1e-300)


def identity_significance(
    z: torch.Tensor,
    identity: torch.Tensor,
    schema: AttributeSchema,
    labels: Mapping[str, torch.Tensor],
    embed: Embedder,
    rows: torch.Tensor,
    n_bootstrap: int = 200,
    seed: int = 0,
    attributes: Sequence[str] | None = None,
) -> dict[str, MetricEstimate]:
    """S_k for every attribute of ``schema`` (or of ``attributes``), over the probe rows ``rows``.

    ``z`` (N, D) L2-normalised embeddings of the whole probe set (the impostor pairs of the
    denominator are all of its pairs of different identities); ``rows`` the samples whose
    counterfactuals are made (each with its default edit); labelled rows only per attribute.
    """
    from frx_plugin.randomness import poisson_bootstrap_weights

    if torch.unique(identity).numel() < 2:
        raise CounterfactualError("identity significance needs impostor pairs: the probe set has a single identity")
    ids, index = torch.unique(identity, return_inverse=True)
    replicate = poisson_bootstrap_weights(ids, seed, n_bootstrap) if n_bootstrap else torch.zeros(0, ids.numel(), dtype=torch.float64)
    weights = torch.cat([torch.ones(1, ids.numel(), dtype=torch.float64), replicate])  # (R, identities)
    distance = 1.0 - impostor_mean_cosine(z, identity, weights)  # (R,)
    out: dict[str, MetricEstimate] = {}
    for attribute in schema:
        if attributes is not None and attribute.name not in attributes:
            continue
        raw = labels[attribute.name]
        keep = rows[~attribute.missing_mask(raw[rows])]
        if keep.numel() == 0:
            continue
        scale = edit_scale(attribute, raw) if attribute.kind == "continuous" else 1.0
        edited = embed(keep, attribute.name, edit_values(attribute, raw[keep], scale))
        moved = 1.0 - (torch.nn.functional.normalize(z[keep].to(torch.float64), dim=1) * edited.to(torch.float64)).sum(1)
        w = weights[:, index[keep]]  # (R, m)
        value = (w @ moved) / w.sum(1).clamp_min(1e-300) / distance
        out[attribute.name] = bootstrap_estimate(value[0], value[1:] if n_bootstrap else None)
    return out
