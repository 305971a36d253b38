"""The edits a counterfactual makes: a binary attribute flips, a categorical one moves to the next
class, a continuous one moves by one standard deviation of its labelled values in the probe set."""

from __future__ import annotations

import math

import torch

from frx_plugin.attributes import Attribute


def edit_scale(attribute: Attribute, labels: torch.Tensor) -> float:
    """One standard deviation of a continuous attribute's labelled values (1.0 if undefined)."""
    values = labels[~attribute.missing_mask(labels)].to(torch.float64)
    sd = float(values.std()) if values.numel() > 1 else math.nan
    return sd if math.isfinite(sd) and sd > 0 else 1.0


def edit_values(attribute: Attribute, current: torch.Tensor, scale: float) -> torch.Tensor:
    """The default edit of each value: flip, next class, or + ``scale`` (one standard deviation)."""
    if attribute.kind == "binary":
        return 1 - current
    if attribute.kind == "categorical":
        return (current + 1) % attribute.num_classes
    return current + scale


def away_values(attribute: Attribute, current: torch.Tensor, reference: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Values of ``current`` moved away from ``reference``, and where that changes anything."""
    if attribute.discrete:
        same = current == reference
        return torch.where(same, edit_values(attribute, current, scale), current), same
    step = torch.where(current >= reference, scale, -scale).to(current.dtype)
    return current + step, torch.ones_like(current, dtype=torch.bool)
