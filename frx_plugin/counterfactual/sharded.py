"""The exact counterfactual embedder across processes: each renders and embeds its share of the faces."""

from __future__ import annotations

import math
from typing import Any

import torch

from frx_plugin.collectives import Collectives, gather_rows
from frx_plugin.counterfactual.significance import exact_embedder
from frx_plugin.errors import CounterfactualError


class ShardedEmbedder:
    """The exact embedder, each process rendering and embedding its share of the changed faces; all get all.

    The faces of all the edits of one call form one sequence; rank r takes faces r, r + W, … of it.
    A rank with no share still takes part in the gather; a rank whose share fails sends NaN, so
    every rank sees the failure after the gather and stops alike.
    """

    def __init__(self, base: Any, collectives: Collectives, dim: int, device: torch.device) -> None:
        self.base, self.collectives, self.dim, self.device = base, collectives, dim, device

    def __call__(self, rows: torch.Tensor, attribute: str, values: torch.Tensor) -> torch.Tensor:
        return self.many([(rows, attribute, values)])[0]

    def many(self, edits: list) -> list[torch.Tensor]:
        c = self.collectives
        if not edits:  # the same on every rank: no collective to skip
            return []
        counts = [int(rows.numel()) for rows, _, _ in edits]
        total, start, mine = sum(counts), 0, []
        for (rows, attribute, values), n in zip(edits, counts):
            # this rank's faces of the sequence that fall in this edit, as positions inside the edit
            first = (c.rank - start) % c.world_size
            local = torch.arange(first, n, c.world_size, device="cpu")
            if local.numel():
                mine.append((rows[local], attribute, values[local]))
            start += n
        try:
            local = torch.cat(self.base.many(mine)) if mine else torch.empty(0, self.dim, device=self.device)
            failure = None
        except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
            local, failure = torch.full((sum(int(r.numel()) for r, _, _ in mine), self.dim), math.nan, device=self.device), exc
        gathered = gather_rows(c, local, total)
        if failure is not None:
            raise failure
        if not bool(torch.isfinite(gathered).all()):
            raise CounterfactualError(f"changed faces of {sorted({a for _, a, _ in edits})} could not be embedded on every process (NaN)")
        return list(torch.split(gathered, counts))


def sharded_exact_embedder(model: Any, generator: Any, batch_size: int, collectives: Collectives, dim: int,
                           device: torch.device):
    """The exact embedder over the processes of ``collectives`` (the plain one in a single process)."""
    base = exact_embedder(model, generator, batch_size)
    return base if collectives.world_size == 1 else ShardedEmbedder(base, collectives, dim, device)
