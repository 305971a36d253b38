"""The parts of ``report.html`` that several sections share: the attribute table, verification and pass lines, and the figure blocks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from frx_plugin.commands.report.markup import (
    MISSING,
    Page,
    count,
    details,
    estimate,
    fmr_text,
    html_table,
    number,
    paragraph,
    warning_list,
)

ERROR_KINDS = (("all", "all errors"), ("false_non_match", "false non-match"), ("false_match", "false match"))


def attribute_label(name: str, group: Any) -> str:
    return f"{name}\n({group})" if group else name


def attributes_table(attributes: Sequence[dict[str, Any]], table_id: str) -> str:
    """One row per attribute: group, kind, metric with its interval, leakage ℓ with its interval (and notes)."""
    balanced = any((a.get("extra") or {}).get("balanced_accuracy") is not None for a in attributes)
    notes = any(a.get("reason") for a in attributes)
    headers = ["attribute", "group", "kind", "metric", "value (95% CI)", "leakage ℓ (95% CI)"]
    headers += ["balanced accuracy"] * balanced + ["n"] + ["note"] * notes
    rows = []
    for a in attributes:
        row = [a.get("name", MISSING), a.get("group") or MISSING, a.get("kind") or MISSING, a.get("metric") or MISSING,
               estimate({"value": a.get("value"), "low": a.get("low"), "high": a.get("high")}),
               estimate({"value": a.get("leakage"), "low": a.get("leakage_low"), "high": a.get("leakage_high")})]
        if balanced:
            row.append(number((a.get("extra") or {}).get("balanced_accuracy")))
        row.append(count(a.get("n")))
        if notes:
            row.append(a.get("reason") or "")
        rows.append(row)
    numeric = [4, 5] + ([6, 7] if balanced else [6])
    return html_table(headers, rows, table_id, numeric)


def verification_line(verification: Any) -> str:
    if not isinstance(verification, dict):
        return paragraph("verification: not measured", "note")
    text = f"Verification: TAR {number(verification.get('tar'))} at FMR {fmr_text(verification.get('fmr'))}"
    if verification.get("threshold") is not None:
        text += f", threshold τ = {number(verification.get('threshold'), 4)}"
    text += f" ({count(verification.get('genuine_pairs'))} genuine, {count(verification.get('impostor_pairs'))} impostor pairs)."
    return paragraph(text)


def pass_line(record: dict[str, Any]) -> str:
    parts = []
    if record.get("epoch") is not None:
        parts.append(f"epoch {record['epoch']}")
    if record.get("global_step") is not None:
        parts.append(f"step {count(record['global_step'])}")
    parts.append(f"{count(record.get('n_samples'))} samples of {count(record.get('n_identities'))} identities")
    if record.get("n_folds") is not None:
        parts.append(f"{record['n_folds']} identity-disjoint folds")
    if record.get("head"):
        parts.append(f"{record['head']} heads")
    if record.get("counterfactuals"):
        parts.append(f"{record['counterfactuals']} counterfactuals")
    return paragraph(", ".join(parts) + ".")


def ordered_names(attributes: Sequence[dict[str, Any]], *mappings: Any) -> list[str]:
    """Attribute names in the record's order, then any others the mappings name."""
    names = [a["name"] for a in attributes if isinstance(a, dict) and "name" in a]
    for mapping in mappings:
        for name in mapping or {}:
            if name not in names:
                names.append(name)
    return names


def groups_of(attributes: Sequence[dict[str, Any]]) -> dict[str | None, Any]:
    return {a.get("name"): a.get("group") for a in attributes if isinstance(a, dict)}


def leakage_bars(page: Page, attributes: Sequence[dict[str, Any]], title: str) -> str:
    from frx_plugin.figures import plot_estimates

    entries = [{"value": a.get("leakage"), "low": a.get("leakage_low"), "high": a.get("leakage_high")} for a in attributes]
    labels = [attribute_label(a.get("name", "?"), a.get("group")) for a in attributes]
    return page.figure(lambda path: plot_estimates(labels, {"": entries}, path, ylabel="normalised leakage ℓ", title=title, ylim=(0.0, 1.05)),
                       "normalised leakage per attribute with 95% intervals",
                       "Normalised leakage ℓ per attribute (held out, identity-disjoint folds); bars are 95% bootstrap intervals over identities.")


def significance_block(page: Page, significance: dict[str, Any], attributes: Sequence[dict[str, Any]], title: str, table_id: str) -> str:
    from frx_plugin.figures import plot_estimates

    names = [n for n in ordered_names(attributes, significance) if n in significance]
    groups = groups_of(attributes)
    labels = [attribute_label(n, groups.get(n)) for n in names]
    entries = [significance[n] for n in names]
    figure = page.figure(lambda path: plot_estimates(labels, {"": entries}, path, ylabel="identity significance S_k", title=title),
                         "identity significance per attribute with 95% intervals",
                         "Identity significance S_k: how far changing the attribute alone moves the embedding, relative to changing identity.")
    table = html_table(["attribute", "S_k (95% CI)"], [[n, estimate(significance[n])] for n in names], table_id, [1])
    return figure + details("numbers", table)


def attribution_block(page: Page, attribution: dict[str, Any], attributes: Sequence[dict[str, Any]], title: str, table_id: str) -> str:
    from frx_plugin.figures import plot_estimates

    kinds = [(key, label) for key, label in ERROR_KINDS if isinstance(attribution.get(key), dict)]
    if not kinds:
        return paragraph("no error attribution recorded", "note")
    names = ordered_names(attributes, *(attribution[k] for k, _ in kinds))
    names = [n for n in names if any(n in attribution[k] for k, _ in kinds)]
    groups = groups_of(attributes)
    labels = [attribute_label(n, groups.get(n)) for n in names]
    series = {label: [attribution[key].get(n) for n in names] for key, label in kinds}
    figure = page.figure(lambda path: plot_estimates(labels, series, path, ylabel="share of explained errors", title=title, ylim=(0.0, 1.05)),
                         "share of explained errors each attribute decides",
                         "Share of the explained errors whose decision each attribute flips on its own (an error can have several).")
    rows = [[n] + [number(attribution[key].get(n)) for key, _ in kinds] for n in names]
    table = html_table(["attribute"] + [label for _, label in kinds], rows, table_id, range(1, len(kinds) + 1))
    return figure + details("numbers", table)


def recovery_block(page: Page, recovery: dict[str, Any], title: str, table_id: str = "recovery-table") -> str:
    from frx_plugin.figures import plot_recovery

    figure = page.figure(lambda path: plot_recovery(recovery, path, title=title), "recovery significance, two-stage and direct",
                         "Recovery significance R_k: two-stage E(G(z)) beside the direct probe heads h(z), with 95% intervals.")
    entries = recovery.get("attributes") or {}
    rows = []
    for name, entry in entries.items():
        entry = entry if isinstance(entry, dict) else {}
        rows.append([name, entry.get("group") or MISSING, estimate(entry.get("two_stage")), estimate(entry.get("direct")),
                     number(entry.get("real_images")), "yes" if entry.get("readable", "two_stage" in entry) else "no"])
    table = html_table(["attribute", "group", "two-stage R_k (95% CI)", "direct R_k (95% CI)", "ceiling: estimator R_k on real faces", "readable"],
                   rows, table_id, [2, 3, 4])
    return figure + details("numbers", table) + warning_list(recovery.get("errors"))


def differentials_block(page: Page, differentials: dict[str, Any], table_id: str) -> str:
    """Demographic differentials: each attribute's max/min ratios, FDR and GARBE; the groups of the most
    unequal one (FNMR and FMR with intervals, or why a group is too small) and their DET curves."""
    from frx_plugin.figures import plot_det

    items = [a for a in differentials.get("attributes") or [] if isinstance(a, dict)]
    if not items:
        return paragraph("no demographic differentials recorded", "note")
    intro = paragraph(f"At the global threshold τ = {number(differentials.get('tau'), 4)} (FMR {fmr_text(differentials.get('fmr'))} over "
                      "all impostor pairs): FNMR of each group's genuine pairs, FMR of its same-group impostor pairs; GARBE is 0 "
                      "and FDR 1 where every group fares alike.")
    from frx_plugin.differentials.reasons import summary_reason

    def explained(item: dict[str, Any], key: str) -> str:
        reason = summary_reason(item, key)
        return estimate(item.get(key)) + (f" ({reason})" if reason else "")

    summary = html_table(["attribute", "FNMR max/min (95% CI)", "FMR max/min (95% CI)", "FDR (95% CI)", "GARBE (95% CI)", "groups"],
                         [[a.get("name", MISSING), explained(a, "fnmr_ratio"), explained(a, "fmr_ratio"), explained(a, "fdr"),
                           explained(a, "garbe"), count(len(a.get("groups") or []))] for a in items], table_id, [1, 2, 3, 4, 5])
    curves = differentials.get("curves") if isinstance(differentials.get("curves"), dict) else None
    worst = next((a for a in items if curves and a.get("name") == curves.get("attribute")), None)
    if worst is None:
        finite_garbe = [a for a in items if isinstance(a.get("garbe"), dict) and a["garbe"].get("value") is not None]
        worst = max(finite_garbe, key=lambda a: a["garbe"]["value"], default=None)
    if worst is None:
        return intro + summary + paragraph("No table of groups and no DET curves: they show the most unequal attribute (the highest "
                                           "GARBE), and no attribute has a GARBE (the reasons are in the table).", "note")
    rows = []
    for g in worst.get("groups") or []:
        rows.append([g.get("label", MISSING), count(g.get("images")), count(g.get("genuine_pairs")),
                     estimate(g.get("fnmr")) if g.get("fnmr") else f"too small: {g.get('fnmr_too_small') or MISSING}",
                     count(g.get("impostor_pairs")),
                     estimate(g.get("fmr")) if g.get("fmr") else f"too small: {g.get('fmr_too_small') or MISSING}"])
    groups = html_table(["group", "images", "genuine pairs", "FNMR (95% CI)", "same-group impostor pairs", "FMR (95% CI)"],
                        rows, f"{table_id}-groups", [1, 2, 3, 4, 5])
    figure = ""
    if curves:
        figure = page.figure(lambda path: plot_det(curves, path, worst.get("groups") or []),
                             f"DET curves per group of {worst.get('name')}",
                             f"DET curves of the groups of {worst.get('name')}, the most unequal attribute (highest GARBE); "
                             "dots: each group at the global threshold.")
    else:
        figure = paragraph("No DET curves: this run did not record the groups' score curves (frx analyze and the callbacks "
                           "record them with the differentials).", "note")
    return intro + summary + f"<h4>Groups of {worst.get('name')}</h4>" + figure + groups

