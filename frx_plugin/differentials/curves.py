"""DET data of demographic differentials: every group's FNMR and FMR over a grid of thresholds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from frx_plugin.attributes import Attribute
from frx_plugin.differentials.rates import attribute_groups
from frx_plugin.verification import genuine_pairs, prepare_embeddings

__all__ = ["GroupScoreCurves", "group_score_curves"]


@dataclass
class GroupScoreCurves:
    """Per-group FNMR(t) = P(genuine ≤ t) and FMR(t) = P(impostor > t) at the grid ``thresholds`` (T,).

    ``genuine_at_or_below`` / ``impostor_above``: (G, T) pair counts; ``genuine_pairs`` /
    ``impostor_pairs``: (G,) totals; all int64 on the CPU. Rates of a group without pairs are NaN.
    """

    attribute: str
    groups: list[str]
    thresholds: torch.Tensor
    genuine_pairs: torch.Tensor
    impostor_pairs: torch.Tensor
    genuine_at_or_below: torch.Tensor
    impostor_above: torch.Tensor

    def fnmr(self) -> torch.Tensor:
        return self.genuine_at_or_below.double() / self.genuine_pairs.double()[:, None]

    def fmr(self) -> torch.Tensor:
        return self.impostor_above.double() / self.impostor_pairs.double()[:, None]

    def to_record(self) -> dict[str, Any]:
        return {"attribute": self.attribute, "groups": list(self.groups), "thresholds": self.thresholds.tolist(),
                "genuine_pairs": self.genuine_pairs.tolist(), "impostor_pairs": self.impostor_pairs.tolist(),
                "genuine_at_or_below": self.genuine_at_or_below.tolist(), "impostor_above": self.impostor_above.tolist()}


@torch.no_grad()
def group_score_curves(embeddings: torch.Tensor, identity: torch.Tensor, labels: torch.Tensor, attribute: Attribute, *,
                       thresholds: int = 201, bands: int = 4) -> GroupScoreCurves:
    """Pair counts per group of ``attribute`` at ``thresholds`` evenly spaced cosine thresholds in [−1, 1]: DET curves.

    One blocked pass over all pairs (each impostor score is binned, so this costs more than
    :func:`demographic_differentials`; run it for the one attribute to be drawn). Groups as in
    :func:`attribute_groups`; ``labels``: that attribute's (N,) labels on the CPU.
    """
    z, identity_on = prepare_embeddings(embeddings, identity)
    codes, names, _ = attribute_groups(attribute, labels, bands)
    codes = codes.to(z.device)
    n, n_groups, device = z.shape[0], len(names), z.device
    grid = torch.linspace(-1.0, 1.0, thresholds, dtype=torch.float64, device=device)
    # cell c holds the scores s with grid[c−1] < s ≤ grid[c] (cell T: above the grid), so counts at or below grid[t] are exact
    cells = thresholds + 1
    impostor = torch.zeros(max(n_groups, 1) * cells, dtype=torch.int64, device=device)
    first, second = genuine_pairs(identity_on)
    genuine_scores = []
    rows = max(1, 4_000_000 // max(n, 1))
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        scores = z[start:stop] @ z[start:].T
        lo, hi = torch.searchsorted(first, torch.tensor([start, stop], device=device)).tolist()
        genuine_scores.append(scores[first[lo:hi] - start, second[lo:hi] - start])
        g_row, g_col = codes[start:stop], codes[start:]
        upper = torch.arange(start, n, device=device)[None, :] > torch.arange(start, stop, device=device)[:, None]
        keep = upper & (identity_on[start:stop, None] != identity_on[None, start:]) & (g_row[:, None] == g_col[None, :]) & (g_row[:, None] >= 0)
        i, _ = keep.nonzero(as_tuple=True)
        cell = torch.bucketize(scores[keep].double(), grid)
        impostor += torch.bincount(g_row[i] * cells + cell, minlength=impostor.numel())
    genuine_all = torch.cat(genuine_scores).double() if genuine_scores else torch.empty(0, dtype=torch.float64, device=device)
    same = (codes[first] == codes[second]) & (codes[first] >= 0)
    genuine = torch.bincount(codes[first[same]] * cells + torch.bucketize(genuine_all[same], grid), minlength=impostor.numel())
    genuine, impostor = genuine.view(-1, cells)[:n_groups].cpu(), impostor.view(-1, cells)[:n_groups].cpu()
    below = genuine.cumsum(1)[:, :thresholds]
    above = impostor.sum(1, keepdim=True) - impostor.cumsum(1)[:, :thresholds]
    return GroupScoreCurves(attribute.name, names, grid.cpu(), genuine.sum(1), impostor.sum(1), below, above)
