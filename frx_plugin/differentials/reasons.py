"""Why a summary of the demographic differentials has no value, from its record (for tables and reports).

A max/min ratio, FDR or GARBE needs two groups whose rate could be measured (enough pairs), and a
ratio or a Gini index also needs a rate above 0 somewhere; an infinite max/min ratio has a least rate of 0.
"""

from __future__ import annotations

from typing import Any

#: The rates each summary is made of.
RATES_OF = {"fnmr_ratio": ("fnmr",), "fmr_ratio": ("fmr",), "fdr": ("fnmr", "fmr"), "garbe": ("fnmr", "fmr")}
NAMES = {"fnmr": "FNMR", "fmr": "FMR"}


def _measured(groups: list[dict[str, Any]], rate: str) -> list[float]:
    return [g[rate]["value"] for g in groups if isinstance(g.get(rate), dict) and g[rate].get("value") is not None]


def summary_reason(item: dict[str, Any], key: str) -> str | None:
    """Why the summary ``key`` (fnmr_ratio, fmr_ratio, fdr, garbe) of an attribute's record is ∞ or has no value;
    ``None`` when it has a finite value."""
    value = found if isinstance(found := item.get(key), dict) else {}
    if value.get("infinite"):
        what = "false non-match" if key == "fnmr_ratio" else "false match"
        return f"a group has no {what} at τ: the least rate is 0"
    if value.get("value") is not None:
        return None
    groups = [g for g in item.get("groups") or [] if isinstance(g, dict)]
    for rate in RATES_OF.get(key, ()):
        measured = _measured(groups, rate)
        if len(measured) < 2:
            return f"fewer than two groups with enough pairs for an {NAMES[rate]} ({len(measured)} of {len(groups)})"
    for rate in RATES_OF.get(key, ()):
        if key != "fdr" and all(v == 0 for v in _measured(groups, rate)):
            return f"every group's {NAMES[rate]} is 0 at τ (no ratio or Gini index of zero rates)"
    return "no finite value (its bootstrap gave none)"
