"""Figures made with matplotlib (Agg backend, no display needed)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _save(fig, path: Path) -> Path:
    """Write ``fig`` as a PNG atomically (readers see the old figure or the new one, never half) and close it."""
    import matplotlib.pyplot as plt

    from frx_plugin.history import atomic_write

    path = Path(path)
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)
    return path


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
    return _save(fig, path)


def plot_counterfactuals(rows: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """One row per explained error pair: the two faces, then the second face changed one attribute at a time.

    Each row: ``kind``, ``tau``, ``score``, ``first`` and ``second`` images (3, H, W) in [0, 1],
    optionally ``decoded``: ``(label, image)`` panels shown after them (the decoded path: both faces as the
    decoder renders them), and ``changed``: a list of ``(attribute, image, score)`` — the second face with
    that attribute changed and the pair's score then. A panel whose score crosses τ is framed in green.
    Written atomically (PNG): a reader sees the old figure or the new one, never half.
    """
    return _save(_counterfactual_figure(rows, title), path)


def counterfactual_strip(rows: Sequence[dict[str, Any]], title: str = "") -> Any:
    """The figure of :func:`plot_counterfactuals` as a CHW float image in [0, 1] (for TensorBoard's ``add_image``)."""
    import matplotlib.pyplot as plt
    import torch

    fig = _counterfactual_figure(rows, title)
    try:
        fig.set_dpi(90)
        fig.canvas.draw()
        pixels = torch.frombuffer(bytearray(fig.canvas.buffer_rgba()), dtype=torch.uint8)
        width, height = fig.canvas.get_width_height()
        return pixels.view(height, width, 4)[..., :3].permute(2, 0, 1).float() / 255.0
    finally:
        plt.close(fig)


def _counterfactual_figure(rows: Sequence[dict[str, Any]], title: str) -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("plot_counterfactuals: no error pairs to show")
    columns = 2 + max(len(r.get("decoded", ())) + len(r["changed"]) for r in rows)
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
        decoded = list(row.get("decoded", ()))
        for c, (label, image) in enumerate(decoded):
            show(axes[r, 2 + c], image, label)
        first = 2 + len(decoded)
        for c, (attribute, image, score) in enumerate(row["changed"]):
            flipped = (score > row["tau"]) if row["kind"] == "false_non_match" else (score <= row["tau"])
            verb = "takes A's" if row["kind"] == "false_non_match" else "changes"
            show(axes[r, first + c], image, f"{'G(B)' if decoded else 'B'} {verb} {attribute}\ncos = {score:.3f} ({score - row['score']:+.3f})",
                 "tab:green" if flipped else None)
        for c in range(first + len(row["changed"]), columns):
            axes[r, c].axis("off")
    if title:
        import textwrap

        fig.suptitle(textwrap.fill(title, width=max(40, 26 * columns)), fontsize=9)  # wrapped to the figure's width
    fig.tight_layout()
    return fig


def plot_det(curves: dict[str, Any], path: Path, groups: Sequence[dict[str, Any]] = (), title: str = "") -> Path:
    """DET curves per group (FNMR against FMR, log axes) from a differentials record's ``curves``, each group's
    operating point at the global τ marked (``groups``: the attribute's group records, with ``fnmr``/``fmr``)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    below = np.asarray(curves.get("genuine_at_or_below") or [], dtype=float)
    above = np.asarray(curves.get("impostor_above") or [], dtype=float)
    genuine = np.asarray(curves.get("genuine_pairs") or [], dtype=float)
    impostor = np.asarray(curves.get("impostor_pairs") or [], dtype=float)
    drawn = [g for g in range(len(curves.get("groups") or [])) if genuine[g] > 0 and impostor[g] > 0]
    if not drawn:
        raise ValueError("plot_det: no group with genuine and impostor pairs")
    fig, ax = plt.subplots(figsize=(5.6, 4.4))
    floor = 0.5 / max(1.0, float(impostor.max()))
    points = {g.get("label"): g for g in groups if isinstance(g, dict)}
    for g in drawn:
        name = curves["groups"][g]
        fmr, fnmr = np.maximum(above[g] / impostor[g], floor), np.maximum(below[g] / genuine[g], 0.5 / genuine[g])
        (line,) = ax.plot(fmr, fnmr, label=f"{name} ({int(genuine[g]):,} genuine, {int(impostor[g]):,} impostor pairs)")
        point = points.get(name) or {}
        at = ((point.get("fmr") or {}).get("value"), (point.get("fnmr") or {}).get("value"))
        if at[0] is not None and at[1] is not None:
            ax.plot([max(at[0], floor)], [max(at[1], 0.5 / genuine[g])], "o", color=line.get_color())
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("FMR (same-group impostor pairs)")
    ax.set_ylabel("FNMR (genuine pairs)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title or f"DET per group of {curves.get('attribute')} (dots: the global threshold)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def decoded_grid(originals, decoded, gap: int = 2):
    """One image ``(3, H', W')`` of held-out faces (first column) beside their decoder samples (the others).

    ``originals`` ``(n, 3, H, W)`` and ``decoded`` ``(n, S, 3, H, W)`` in [0, 1]; rows are faces,
    separated by ``gap`` white pixels (for TensorBoard's ``add_image``).
    """
    import torch

    n, samples, c, h, w = decoded.shape
    grid = torch.ones(c, n * (h + gap) - gap, (samples + 1) * (w + gap) - gap)
    for i in range(n):
        top = i * (h + gap)
        grid[:, top : top + h, :w] = originals[i].float().clamp(0, 1)
        for s in range(samples):
            left = (s + 1) * (w + gap)
            grid[:, top : top + h, left : left + w] = decoded[i, s].float().clamp(0, 1)
    return grid


def plot_decoded(originals, decoded, path: Path, title: str = "", similarity=None) -> Path:
    """``decoded.png``: held-out faces (left) beside several decoder samples of their embedding (right).

    ``originals`` ``(n, 3, H, W)``, ``decoded`` ``(n, S, 3, H, W)``; ``similarity`` ``(n, S)``
    (optional): cos(f(x̂), z) of each sample, shown under it.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n, samples = decoded.shape[:2]
    if n == 0:
        raise ValueError("plot_decoded: no faces to show")
    fig, axes = plt.subplots(n, samples + 1, figsize=(1.45 * (samples + 1), 1.6 * n + 0.5), squeeze=False)
    for i in range(n):
        panels = [(originals[i], "held-out face" if i == 0 else "")]
        for s in range(samples):
            label = f"G(z, ε{s + 1})" if i == 0 else ""
            if similarity is not None:
                label = (label + "\n" if label else "") + f"cos {float(similarity[i, s]):.2f}"
            panels.append((decoded[i, s], label))
        for ax, (image, label) in zip(axes[i], panels):
            ax.imshow(image.detach().float().cpu().permute(1, 2, 0).clamp(0, 1).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(label, fontsize=7)
    if title:
        import textwrap

        fig.suptitle(textwrap.fill(title, width=max(40, 18 * (samples + 1))), fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_recovery(recovery: dict[str, Any], path: Path, title: str = "") -> Path:
    """Recovery significance R_k per attribute: two-stage (E∘G) beside direct (probe heads), with 95% intervals.

    ``recovery``: a report's ``recovery`` entry. Attributes the estimator cannot read from real
    faces are hatched; the grey tick is R_k of the estimator on the real faces (its ceiling).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    entries = recovery.get("attributes", {})
    names = sorted(entries, key=lambda n: ((entries[n].get("group") or ""), n))
    if not names:
        raise ValueError("plot_recovery: no attributes to show")

    def number(value) -> float:
        return math.nan if value is None else float(value)

    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(names) + 1.5), 4.2))
    width = 0.38
    bars = ((-width / 2, "two_stage", "tab:blue", "two-stage E(G(z))"), (width / 2, "direct", "tab:orange", "direct h(z)"))
    for offset, key, colour, label in bars:
        for i, name in enumerate(names):
            estimate = entries[name].get(key)
            if not estimate:
                continue
            value, low, high = (number(estimate.get(k)) for k in ("value", "low", "high"))
            unreadable = key == "two_stage" and not entries[name].get("readable", True)
            ax.bar(i + offset, 0.0 if math.isnan(value) else value, width, color=colour, alpha=0.45 if unreadable else 0.9,
                   hatch="//" if unreadable else None, label=label if i == 0 else None)
            if not (math.isnan(low) or math.isnan(high)):
                ax.errorbar(i + offset, value, yerr=[[max(0.0, value - low)], [max(0.0, high - value)]], color="black", capsize=2, lw=0.8)
        if key == "two_stage":
            for i, name in enumerate(names):
                ceiling = number(entries[name].get("real_images"))
                if not math.isnan(ceiling):
                    ax.plot([i + offset - width / 2, i + offset + width / 2], [ceiling] * 2, color="grey", lw=2,
                            label="estimator on real faces" if i == 0 else None)
    ax.axhline(0.0, color="black", lw=0.6)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([f"{n}\n({entries[n].get('group') or '-'})" for n in names], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("recovery significance R_k")
    ax.set_ylim(min(-0.1, ax.get_ylim()[0]), 1.05)
    ax.grid(axis="y", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=7, loc="upper right")
    similarity = recovery.get("identity_similarity") or {}
    subtitle = (
        f"decoder {recovery.get('decoder')}, estimator {recovery.get('estimator')}; cos(f(G(z)), z) "
        f"{number(similarity.get('decoded')):.2f} (genuine {number(similarity.get('genuine')):.2f}, "
        f"impostor {number(similarity.get('impostor')):.2f}); "
        f"Spearman two-stage vs direct {number(recovery.get('spearman_two_stage_vs_direct')):.2f}"
    )
    import textwrap

    width_chars = int(fig.get_figwidth() * 15)  # about 15 characters of 8-point text per inch
    ax.set_title("\n".join(filter(None, [title, textwrap.fill(subtitle, width=width_chars)])), fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _estimate_parts(entry: Any) -> tuple[float, float, float]:
    """(value, low, high) of a number or an ``{"value", "low", "high"}`` entry; missing parts are NaN."""

    def number(value: Any) -> float:
        if value is None or isinstance(value, bool):
            return math.nan
        try:
            return float(value)
        except (TypeError, ValueError):
            return math.nan

    if isinstance(entry, dict):
        return number(entry.get("value")), number(entry.get("low")), number(entry.get("high"))
    value = number(entry)
    return value, math.nan, math.nan


def plot_estimates(
    categories: Sequence[str],
    series: Mapping[str, Sequence[Any]],
    path: Path,
    *,
    ylabel: str,
    title: str = "",
    ylim: tuple[float, float] | None = None,
) -> Path:
    """Grouped bars with 95% intervals: one group per category (attribute), one bar per series (backbone, error kind).

    ``series`` maps a label to one entry per category: a number, ``{"value", "low", "high"}``
    (the interval drawn when both bounds are there), or ``None`` (JSON's null: no bar, a grey
    "—" at the base instead). One series gets no legend unless its label is non-empty.
    ``ylim``: the value axis (default: matplotlib's, always including 0). Written atomically (PNG).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    categories = list(categories)
    labels = list(series)
    if not categories or not labels:
        raise ValueError("plot_estimates: nothing to plot (no categories or no series)")
    for label in labels:
        if len(series[label]) != len(categories):
            raise ValueError(f"plot_estimates: series {label!r} has {len(series[label])} entries for {len(categories)} categories")
    groups, bars = len(categories), len(labels)
    fig, ax = plt.subplots(figsize=(min(16.0, max(6.0, 0.28 * groups * (bars + 1) + 1.5)), 4.2))
    width = 0.8 / bars
    cmap = plt.get_cmap("tab10")
    missing: list[float] = []
    labelled: set[str] = set()
    for b, label in enumerate(labels):
        offset = (b - (bars - 1) / 2) * width
        for i, entry in enumerate(series[label]):
            value, low, high = _estimate_parts(entry)
            x = i + offset
            if math.isnan(value):
                missing.append(x)
                continue
            ax.bar(x, value, width * 0.92, color=cmap(b % 10), label=label if label and label not in labelled else None)
            labelled.add(label)
            if not (math.isnan(low) or math.isnan(high)):
                ax.errorbar(x, value, yerr=[[max(0.0, value - low)], [max(0.0, high - value)]], color="black", capsize=2, lw=0.8)
    ax.axhline(0.0, color="black", lw=0.6)
    if ylim is not None:
        ax.set_ylim(*ylim)
    for x in missing:
        ax.text(x, 0.0, "—", ha="center", va="bottom", color="dimgrey", fontsize=12, fontweight="bold")
    ax.set_xticks(range(groups))
    longest = max(len(line) for c in categories for line in str(c).splitlines() or [""])
    rotate = groups * max(longest, 4) > 9 * fig.get_figwidth()  # labels wider than their slots are turned
    ax.set_xticklabels(categories, rotation=60 if rotate else 0, ha="right" if rotate else "center", fontsize=7 if rotate else 8)
    ax.set_xlim(-0.6, groups - 0.4)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    handles, names = ax.get_legend_handles_labels()
    if handles:
        unique = dict(zip(names, handles))
        ax.legend(unique.values(), unique.keys(), fontsize=7, loc="best")
    if title:
        import textwrap

        ax.set_title(textwrap.fill(title, width=int(fig.get_figwidth() * 13)), fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_image_rows(rows: Sequence[tuple[str, Sequence[Any], Sequence[str]]], path: Path, title: str = "") -> Path:
    """A grid of faces, one labelled row per entry: ``rows`` = ``[(row label, images (3, H, W) in [0, 1], captions)]``.

    Rows may differ in length (the grid is as wide as the longest) and images in size (each fills its panel).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = [row for row in rows if len(row[1])]
    if not rows:
        raise ValueError("plot_image_rows: no images to show")
    width = max(len(images) for _, images, _ in rows)
    fig, axes = plt.subplots(len(rows), width, figsize=(1.35 * width + 0.3, 1.5 * len(rows) + 0.5), squeeze=False)
    for r, (label, images, captions) in enumerate(rows):
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(images):
                ax.axis("off")
                continue
            ax.imshow(images[c].detach().float().cpu().permute(1, 2, 0).clamp(0, 1).numpy())
            if c < len(captions) and captions[c]:
                ax.set_title(captions[c], fontsize=7)
        axes[r][0].set_ylabel(label, fontsize=7)
    if title:
        import textwrap

        fig.suptitle(textwrap.fill(title, width=max(40, 16 * width)), fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
