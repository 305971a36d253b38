"""Figures made with matplotlib (Agg backend, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import math


def plot_leakage_history(records: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Normalised leakage ℓ of every attribute across epochs: identity attributes, nuisance attributes, and TAR.

    ``records`` are history records (see :mod:`frx_plugin.history`). Shaded
    bands are the 95% bootstrap intervals over identities.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    records = sorted((r for r in records if r.get("attributes")), key=lambda r: r["epoch"])
    if not records:
        raise ValueError("plot_leakage_history: no analysis passes to plot")
    epochs = [r["epoch"] for r in records]
    names = [a["name"] for a in records[0]["attributes"]]
    groups = {a["name"]: a.get("group") or "other" for a in records[0]["attributes"]}
    panels = [g for g in ("identity", "nuisance", "other") if any(groups[n] == g for n in names)]
    has_tar = any(r.get("verification") for r in records)
    fig, axes = plt.subplots(1, len(panels) + has_tar, figsize=(5.2 * (len(panels) + has_tar), 4.2), squeeze=False)
    axes = axes[0]
    cmap = plt.get_cmap("tab10")

    def series(name: str, key: str) -> list[float]:
        out = []
        for r in records:
            item = next((a for a in r["attributes"] if a["name"] == name), None)
            value = None if item is None else item.get(key)
            out.append(math.nan if value is None else value)
        return out

    for ax, group in zip(axes, panels):
        members = [n for n in names if groups[n] == group]
        for i, name in enumerate(members):
            color = cmap(i % 10)
            style = "-" if i < 10 else "--"
            ax.plot(epochs, series(name, "leakage"), style, marker="o", ms=3, color=color, label=name)
            ax.fill_between(epochs, series(name, "leakage_low"), series(name, "leakage_high"), color=color, alpha=0.12)
        ax.set_title(f"{group} attributes")
        ax.set_xlabel("epoch (0 = before training)")
        ax.set_ylabel("normalised leakage ℓ")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2, loc="best")
    if has_tar:
        ax = axes[-1]
        tar = [(r["verification"] or {}).get("tar") if r.get("verification") else None for r in records]
        fmr = next(r["verification"]["fmr"] for r in records if r.get("verification"))
        ax.plot(epochs, [math.nan if t is None else t for t in tar], marker="o", color="black")
        ax.set_title("verification, held-out identities")
        ax.set_xlabel("epoch (0 = before training)")
        ax.set_ylabel(f"TAR at FMR {fmr:g}")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
