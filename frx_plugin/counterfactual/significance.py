"""Identity significance S_k, and the exact embedder (a generator re-renders, the model embeds)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from frx_plugin.attributes import AttributeSchema
from frx_plugin.counterfactual.edits import edit_scale, edit_values
from frx_plugin.errors import CounterfactualError
from frx_plugin.interfaces import AttributeGenerator, Edit, Embedder
from frx_plugin.leakage import MetricEstimate, bootstrap_estimate


def embed_edits(embed: Embedder, edits: Sequence[Edit]) -> list[torch.Tensor]:
    """The changed embeddings of each of ``edits``, through ``embed.many`` where the embedder has it (one batch
    stream for all of them), else one call of ``embed`` per edit."""
    many = getattr(embed, "many", None)
    if callable(many):
        return list(many(list(edits)))
    return [embed(rows, attribute, values) for rows, attribute, values in edits]


def edit_chunks(edits: Sequence[Edit], batch_size: int):
    """The edits' rows in consecutive pieces of at most ``batch_size`` in all: lists of (edit, start, stop)."""
    chunk, room = [], batch_size
    for e, (rows, _, _) in enumerate(edits):
        start = 0
        while start < rows.numel():
            stop = min(rows.numel(), start + room)
            chunk.append((e, start, stop))
            room -= stop - start
            start = stop
            if room == 0:
                yield chunk
                chunk, room = [], batch_size
    if chunk:
        yield chunk


class ExactEmbedder:
    """``embed(rows, attribute, values)`` on the exact path: re-render with the generator, embed with the model.

    :meth:`many` embeds several edits as one stream of ``batch_size`` faces, whichever attribute
    each face changes (with the generator's ``counterfactuals`` where it has one: one render call
    per batch), so a pass of many attributes and few rows each costs what its faces cost.
    """

    def __init__(self, model: Any, generator: AttributeGenerator, batch_size: int = 256) -> None:
        from frx_plugin.model import hook_embedder

        self.generator, self.batch_size = generator, batch_size
        self.embed_images = hook_embedder(model)

    def __call__(self, rows: torch.Tensor, attribute: str, values: torch.Tensor) -> torch.Tensor:
        return self.many([(rows, attribute, values)])[0]

    def _render(self, pieces: list[Edit]) -> torch.Tensor:
        batched = getattr(self.generator, "counterfactuals", None)
        with torch.no_grad():
            if callable(batched):
                return batched(pieces)
            return torch.cat([self.generator.counterfactual(rows, attribute, values) for rows, attribute, values in pieces])

    def many(self, edits: list[Edit]) -> list[torch.Tensor]:
        for _, attribute, _ in edits:
            if attribute not in self.generator.attributes:
                raise CounterfactualError(f"the generator cannot change attribute {attribute!r}; it controls {list(self.generator.attributes)}")
        parts: list[list[torch.Tensor]] = [[] for _ in edits]
        for chunk in edit_chunks(edits, self.batch_size):
            pieces = [(edits[e][0][a:b], edits[e][1], edits[e][2][a:b]) for e, a, b in chunk]
            z = self.embed_images(self._render(pieces))
            offset = 0
            for e, a, b in chunk:
                parts[e].append(z[offset: offset + b - a])
                offset += b - a
        return [torch.cat(p) if p else torch.empty(0, 0, device="cpu") for p in parts]


def exact_embedder(model: Any, generator: AttributeGenerator, batch_size: int = 256) -> ExactEmbedder:
    """The exact path's embedder (:class:`ExactEmbedder`): the generator re-renders, the model embeds."""
    return ExactEmbedder(model, generator, batch_size)


# --------------------------------------------------------------------------- identity significance


def impostor_mean_cosine(z: torch.Tensor, identity: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean cosine over ordered impostor pairs, per row of ``weights`` (R, n_identities).

    Σ_{id(i)≠id(j)} w_i w_j z_i·z_j = ‖Σ_id W_id Z_id‖² − Σ_id W_id²‖Z_id‖², Z_id the sum of an
    identity's embeddings; the pair count likewise from the counts.
    """
    ids, index = torch.unique(identity.to(z.device), return_inverse=True)
    sums = torch.zeros(ids.numel(), z.shape[1], dtype=torch.float64, device=z.device).index_add_(0, index, z.to(torch.float64))
    counts = torch.bincount(index, minlength=ids.numel()).to(torch.float64)
    weights = weights.to(z.device)
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
    replicate = poisson_bootstrap_weights(ids, seed, n_bootstrap) if n_bootstrap else torch.zeros(0, ids.numel(), dtype=torch.float64, device="cpu")
    # the bootstrap's weights are drawn on the CPU (the same numbers everywhere), then live where z does
    weights = torch.cat([torch.ones(1, ids.numel(), dtype=torch.float64, device="cpu"), replicate]).to(z.device)  # (R, identities)
    distance = 1.0 - impostor_mean_cosine(z, identity, weights)  # (R,)
    plans = []  # (attribute, rows kept, their positions in rows, values): the rows with a label, each edited by its default edit
    for attribute in schema:
        if attributes is not None and attribute.name not in attributes:
            continue
        raw = labels[attribute.name]
        labelled = (~attribute.missing_mask(raw[rows])).nonzero().squeeze(1).cpu()
        keep = rows[labelled]
        if keep.numel() == 0:
            continue
        scale = edit_scale(attribute, raw) if attribute.kind == "continuous" else 1.0
        plans.append((attribute, keep, labelled, edit_values(attribute, raw[keep], scale)))
    changed = embed_edits(embed, [(keep, attribute.name, values) for attribute, keep, _, values in plans])
    reference = base_embeddings(embed, rows, z)
    out: dict[str, MetricEstimate] = {}
    for (attribute, keep, labelled, _), edited in zip(plans, changed):
        before = reference[labelled.to(reference.device)]
        moved = 1.0 - (torch.nn.functional.normalize(before.to(z.device, torch.float64), dim=1) * edited.to(z.device, torch.float64)).sum(1)
        made = torch.isfinite(moved)  # a row the embedder could not change (a failed decoder's fold) is left out
        w = weights[:, index[keep]] * made.to(weights.dtype)  # (R, m)
        value = (w @ torch.nan_to_num(moved)) / w.sum(1).clamp_min(1e-300) / distance
        if not bool(made.any()):
            value = torch.full_like(value, math.nan)
        out[attribute.name] = bootstrap_estimate(value[0], value[1:] if n_bootstrap else None)
    return out


def base_embeddings(embed: Embedder, rows: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """What a changed embedding of ``rows`` is compared with: the embedder's ``unedited(rows)`` where it has one (the
    decoded path: the unedited rendering of the same code, so the decoder's own error cancels), else ``z[rows]``."""
    unedited = getattr(embed, "unedited", None)
    if callable(unedited):
        return unedited(rows)
    return z[rows.to(z.device)]
