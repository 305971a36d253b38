"""The decoded path: edit a face's code in the decoder's latent space, render it, re-embed it with the model.

Where no generator can re-render the probe set but the pass trains decoders (the paper's two stages),
each probe face i of fold f is mapped into the latent space of fold f's decoder — the decoder that never
saw f's identities — as w_i = L_f(z_i) (the conv decoder's input z; W+ through the StyleGAN2 decoder's
latent transformer). Attribute k's edit moves it along a direction fitted on the probe set's labels **in
that space**, on the other folds' faces only: their codes' principal coordinates (at most
:data:`DECODED_RANK`), the ridge probe heads of every attribute there, and the latent path's move (the
Gaussian conditional mean of the move that changes head k by the calibrated amount and holds the other
heads, :mod:`frx_plugin.counterfactual.latent`) mapped back. The edited code is rendered, R_f(w_i + v), and
re-embedded by the model, f(R_f(w_i + v)); the base is the unedited rendering of the same code,
f(R_f(w_i)). δ and S_k compare the two (``unedited``), so the decoder's own error cancels: an unedited code
gives δ = 0 exactly.

A decoder offers its latent space through two methods (both built-in decoders have them):
``latent(z) → (B, L)`` and ``render_latent(codes) → (B, C, H, W)``, deterministic.

Under DDP each process trains the decoders of its own folds; it renders and embeds the faces of those
folds and the processes merge (every process makes the same calls, so the collectives match).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from frx_plugin.attributes import AttributeSchema
from frx_plugin.collectives import Collectives, merge_ranks
from frx_plugin.counterfactual.latent import LATENT_RTOL, LatentModel, latent_model
from frx_plugin.errors import CounterfactualError
from frx_plugin.interfaces import Edit

#: The most principal directions of a decoder's latent space that the attribute directions are fitted in.
DECODED_RANK = 256
#: Explained errors shown in a pass's counterfactual strip, and the attributes changed in each.
STRIP_PAIRS = 4
STRIP_CHANGES = 3


def is_editable(decoder: Any) -> bool:
    """Whether ``decoder`` offers its latent space (``latent`` and ``render_latent``) for decoded counterfactuals."""
    return callable(getattr(decoder, "latent", None)) and callable(getattr(decoder, "render_latent", None))


@dataclass
class LatentDirections:
    """Attribute directions in a decoder's latent space, fitted on one part of the probe set.

    ``centre`` (L,) and ``basis`` (L, r): the training codes' mean and principal directions;
    ``model``: the latent path's heads and moves in those r coordinates; ``rows``: the probe rows
    they were fitted on.
    """

    centre: torch.Tensor
    basis: torch.Tensor
    model: LatentModel
    rows: torch.Tensor

    def shift(self, codes: torch.Tensor, attribute: str, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """The move (m, L) float64 of ``codes`` (m, L) that changes ``attribute`` from ``old`` to ``new``."""
        coordinates = (codes.to(torch.float64) - self.centre) @ self.basis
        return self.model.shift(coordinates, attribute, old, new) @ self.basis.T


def fit_directions(codes: torch.Tensor, identity: torch.Tensor, labels: Mapping[str, torch.Tensor], schema: AttributeSchema,
                   rows: torch.Tensor, seed: int = 0) -> LatentDirections:
    """:class:`LatentDirections` fitted on the codes (n, L) of the probe rows ``rows`` with their identities and labels.

    The codes' principal coordinates (at most :data:`DECODED_RANK`, singular values above ``LATENT_RTOL`` of
    the largest), ridge heads of every attribute there on identity-disjoint inner folds, and the latent
    path's calibrated, conditional moves (:func:`~frx_plugin.counterfactual.latent.latent_model`).
    """
    from frx_plugin.counterfactual.latent import counterfactual_heads

    if codes.shape[0] != rows.numel():
        raise CounterfactualError(f"fit_directions: {codes.shape[0]} codes for {rows.numel()} rows")
    if torch.unique(identity[rows]).numel() < 2:
        raise CounterfactualError("decoded counterfactuals: the directions need faces of at least two identities to be fitted on")
    x = codes.to(torch.float64)
    centre = x.mean(0)
    _, values, vectors = torch.linalg.svd(x - centre, full_matrices=False)
    rank = int((values > LATENT_RTOL * values[0].clamp_min(1e-300)).sum()) if values.numel() else 0
    basis = vectors[: max(1, min(rank, DECODED_RANK))].T.contiguous()  # (L, r)
    coordinates = (x - centre) @ basis
    part = {name: labels[name][rows] for name in schema.names}
    directions, bias, held_out = counterfactual_heads(coordinates, identity[rows], part, schema, seed=seed)
    model = latent_model(coordinates, part, schema, directions, bias, mode="conditional", held_out=held_out)
    return LatentDirections(centre, basis, model, rows)


class DecodedEmbedder:
    """``embed(rows, attribute, values)`` on the decoded path, with ``unedited(rows)`` (see the module).

    ``model``: the recognition model (what the ``frx_embed`` hook embeds); ``decoders``: ``{fold: decoder}``
    of the folds this process renders (trained in this pass, their identities never seen); ``folds`` (N,):
    each probe row's fold; ``embeddings`` (N, D), ``identity``, ``labels``, ``schema``: the probe set's.
    ``collectives``: the processes that share the folds (each renders its own, all merge), or ``None``.
    A row whose fold has no decoder here or anywhere (it failed) gets NaN.
    """

    def __init__(self, model: Any, decoders: Mapping[int, Any], folds: torch.Tensor, embeddings: torch.Tensor,
                 identity: torch.Tensor, labels: Mapping[str, torch.Tensor], schema: AttributeSchema, *, batch_size: int = 256,
                 collectives: Collectives | None = None, seed: int = 0) -> None:
        from frx_plugin.model import hook_embedder

        for fold, decoder in decoders.items():
            if not is_editable(decoder):
                raise CounterfactualError(f"the decoder of fold {fold} ({type(decoder).__name__}) has no latent(z) and render_latent(codes); "
                                          "decoded counterfactuals need both")
        self.embed_images = hook_embedder(model)
        self.decoders, self.folds = dict(decoders), folds.cpu()
        self.z = embeddings.detach().to("cpu", torch.float32)
        self.identity, self.labels, self.schema = identity.cpu(), labels, schema
        self.batch_size, self.collectives, self.seed = batch_size, collectives, seed
        self._codes: dict[int, torch.Tensor] = {}
        self._directions: dict[int, LatentDirections] = {}
        self._base: dict[int, torch.Tensor] = {}

    # -- the latent space of a fold -------------------------------------------------------------
    def codes(self, fold: int) -> torch.Tensor:
        """The codes (N, L) of every probe row in fold ``fold``'s decoder (made once)."""
        if fold not in self._codes:
            self._codes[fold] = self.decoders[fold].latent(self.z).detach().cpu()
        return self._codes[fold]

    def directions(self, fold: int) -> LatentDirections:
        """Fold ``fold``'s attribute directions, fitted on the other folds' rows (made once)."""
        if fold not in self._directions:
            train = (self.folds != fold).nonzero().squeeze(1)
            self._directions[fold] = fit_directions(self.codes(fold)[train], self.identity, self.labels, self.schema, train, self.seed)
        return self._directions[fold]

    def edited_codes(self, rows: torch.Tensor, attribute: str, values: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes, ok) of ``rows`` (all in one fold) with ``attribute`` set to ``values`` (``None``: unedited)."""
        fold = int(self.folds[rows[0]])
        codes = self.codes(fold)[rows]
        ok = torch.ones(rows.numel(), dtype=torch.bool)
        if values is None:
            return codes, ok
        try:
            move = self.directions(fold).shift(codes, attribute, self.labels[attribute][rows], values.cpu())
        except CounterfactualError:  # no head for the attribute on this fold's training part: not measurable here
            return codes, torch.zeros_like(ok)
        ok = torch.isfinite(move).all(1)
        return (codes.to(torch.float64) + torch.nan_to_num(move)).to(codes.dtype), ok

    def render(self, rows: torch.Tensor, attribute: str | None = None, values: torch.Tensor | None = None) -> torch.Tensor:
        """Images of ``rows`` (this process's folds only) rendered from their codes, edited where ``attribute`` is given."""
        out: torch.Tensor | None = None
        for fold in torch.unique(self.folds[rows]).tolist():
            if fold not in self.decoders:
                raise CounterfactualError(f"no decoder of fold {fold} in this process")
            where = (self.folds[rows] == fold).nonzero().squeeze(1)
            codes, _ = self.edited_codes(rows[where], attribute or "", None if values is None else values[where])
            images = self.decoders[fold].render_latent(codes)
            if out is None:
                out = torch.empty(rows.numel(), *images.shape[1:])
            out[where] = images
        return out if out is not None else torch.empty(0)

    def strip_rows(self, explanations: Sequence[Any], probe: Any, count: int = STRIP_PAIRS, changes: int = STRIP_CHANGES) -> list[dict[str, Any]]:
        """Figure rows (:func:`frx_plugin.figures.plot_counterfactuals`) of up to ``count`` explained errors whose faces
        this process's decoders render: the real faces A and B, their decodings G(A) and G(B), and G(B) edited along
        its top-ranked attributes with the score each edit gives (s + δ)."""
        from frx_plugin.counterfactual.explanations import figure_pairs, pair_values

        here = [e for e in explanations if int(self.folds[e.first]) in self.decoders and int(self.folds[e.second]) in self.decoders]
        rows = []
        for e in figure_pairs(here, count):
            a, b = torch.tensor([e.first]), torch.tensor([e.second])
            decoded_a, decoded_b = self.render(a)[0], self.render(b)[0]
            again = torch.nn.functional.normalize(self.embed_images(decoded_b[None]).detach().to("cpu", torch.float64), dim=1)[0]
            unedited = float(torch.nn.functional.normalize(self.z[e.first].to(torch.float64), dim=0) @ again)
            changed = []
            for name, delta in [(k, d) for k, d in e.ranked() if d != 0.0][:changes]:
                value = pair_values(self.schema[name], self.labels[name], a, b, e.kind)[0]
                changed.append((name, self.render(b, name, value)[0], e.score + delta))
            rows.append({"kind": e.kind, "tau": e.tau, "score": e.score, "first": probe.images(a)[0], "second": probe.images(b)[0],
                         "decoded": [("G(A)", decoded_a), (f"G(B)\ncos(A, f(G(B))) = {unedited:.3f}", decoded_b)], "changed": changed})
        return rows

    # -- embedding -------------------------------------------------------------------------------
    def _embed_pieces(self, pieces: Sequence[tuple[torch.Tensor, str | None, torch.Tensor | None]]) -> list[torch.Tensor]:
        """Re-embedded renderings of every piece (rows, attribute or None, values or None), NaN where not made."""
        sizes = [rows.numel() for rows, _, _ in pieces]
        dim = self.z.shape[1]
        flat = torch.full((sum(sizes), dim), math.nan, dtype=torch.float32)
        work: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}  # fold -> (positions in flat, codes)
        offset = 0
        for (rows, attribute, values), size in zip(pieces, sizes):
            rows = rows.cpu()
            for fold in torch.unique(self.folds[rows]).tolist():
                if fold not in self.decoders:
                    continue
                where = (self.folds[rows] == fold).nonzero().squeeze(1)
                codes, ok = self.edited_codes(rows[where], attribute or "", None if values is None else values[where])
                work.setdefault(fold, []).append((offset + where[ok], codes[ok]))
            offset += size
        for fold, parts in work.items():
            positions = torch.cat([p for p, _ in parts])
            codes = torch.cat([c for _, c in parts])
            for start in range(0, codes.shape[0], self.batch_size):
                images = self.decoders[fold].render_latent(codes[start : start + self.batch_size])
                flat[positions[start : start + self.batch_size]] = self.embed_images(images).detach().to("cpu", torch.float32)
        if self.collectives is not None:
            flat = merge_ranks(self.collectives, flat)
        return list(torch.split(flat, sizes))

    def many(self, edits: list[Edit]) -> list[torch.Tensor]:
        """The edited renderings' embeddings of each edit (rows, attribute, values), one stream for all of them."""
        for _, attribute, _ in edits:
            if attribute not in self.schema.names:
                raise CounterfactualError(f"decoded counterfactuals: the probe set has no attribute {attribute!r}")
        return self._embed_pieces([(rows, attribute, values) for rows, attribute, values in edits])

    def __call__(self, rows: torch.Tensor, attribute: str, values: torch.Tensor) -> torch.Tensor:
        return self.many([(rows, attribute, values)])[0]

    def unedited(self, rows: torch.Tensor) -> torch.Tensor:
        """The unedited renderings' embeddings (len(rows), D) of ``rows`` (made once per row)."""
        rows = rows.cpu()
        missing = torch.unique(rows[[int(r) not in self._base for r in rows.tolist()]]) if rows.numel() else rows
        if missing.numel():  # the same rows on every process (the caches fill alike), so the collectives match
            for r, value in zip(missing.tolist(), self._embed_pieces([(missing, None, None)])[0]):
                self._base[int(r)] = value
        if rows.numel() == 0:
            return torch.empty(0, self.z.shape[1])
        return torch.stack([self._base[int(r)] for r in rows.tolist()])


def decoded_embedder(model: Any, two_stage: Any, embeddings: torch.Tensor, labels: Mapping[str, torch.Tensor], schema: AttributeSchema,
                     batch_size: int = 256, collectives: Collectives | None = None) -> DecodedEmbedder:
    """The decoded path's embedder from a :class:`~frx_plugin.two_stage.TwoStage` whose decoders this pass trained
    (those of this process's folds that did not fail: ``two_stage.fresh_folds``)."""
    fresh = getattr(two_stage, "fresh_folds", None)
    if not fresh and (collectives is None or collectives.world_size == 1):
        raise CounterfactualError("decoded counterfactuals need decoders trained in this pass; none was")
    decoders = {fold: two_stage.decoders[fold] for fold in sorted(fresh or ())}
    multi = collectives is not None and collectives.world_size > 1
    return DecodedEmbedder(model, decoders, two_stage.folds, embeddings, two_stage.probe.identity, labels, schema,
                           batch_size=batch_size, collectives=collectives if multi else None, seed=two_stage.config.seed)
