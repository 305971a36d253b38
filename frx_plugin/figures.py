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
    from frx_plugin.history import atomic_write

    path = Path(path)
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))  # readers never see half a file
    finally:
        plt.close(fig)
    return path


def plot_counterfactuals(rows: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """One row per explained error pair: the two faces, then the second face changed one attribute at a time.

    Each row: ``kind``, ``tau``, ``score``, ``first`` and ``second`` images (3, H, W) in [0, 1], and
    ``changed``: a list of ``(attribute, image, score)`` — the second face with that attribute
    changed and the pair's score then. A panel whose score crosses τ is framed in green.
    Written atomically (PNG): a reader sees the old figure or the new one, never half.
    """
    import matplotlib

    from frx_plugin.history import atomic_write

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("plot_counterfactuals: no error pairs to show")
    columns = 2 + max(len(r["changed"]) for r in rows)
    fig, axes = plt.subplots(len(rows), columns, figsize=(1.9 * columns, 2.45 * len(rows)), squeeze=False)

    def show(ax, image, label: str, frame: str | None = None) -> None:
        ax.imshow(image.detach().float().cpu().permute(1, 2, 0).clamp(0, 1).numpy())
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(label, fontsize=7)
        if frame:
            for spine in ax.spines.values():
                spine.set_edgecolor(frame)
                spine.set_linewidth(3)

    for r, row in enumerate(rows):
        kind = "false non-match" if row["kind"] == "false_non_match" else "false match"
        show(axes[r, 0], row["first"], f"{kind}\nτ = {row['tau']:.3f}\nface A")
        show(axes[r, 1], row["second"], f"face B\ncos(A, B) = {row['score']:.3f}")
        for c, (attribute, image, score) in enumerate(row["changed"]):
            flipped = (score > row["tau"]) if row["kind"] == "false_non_match" else (score <= row["tau"])
            verb = "takes A's" if row["kind"] == "false_non_match" else "changes"
            show(axes[r, 2 + c], image, f"B {verb} {attribute}\ncos = {score:.3f} ({score - row['score']:+.3f})",
                 "tab:green" if flipped else None)
        for c in range(2 + len(row["changed"]), columns):
            axes[r, c].axis("off")
    if title:
        import textwrap

        fig.suptitle(textwrap.fill(title, width=max(40, 26 * columns)), fontsize=9)  # wrapped to the figure's width
    fig.tight_layout()
    path = Path(path)
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)
    return path
