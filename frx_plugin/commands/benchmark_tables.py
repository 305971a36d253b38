"""The tables of ``frx benchmark``: ``benchmark.csv`` and ``benchmark.md`` from the ``frx.benchmark/1`` document."""

from __future__ import annotations

import csv
import io
from typing import Any

__all__ = ["benchmark_csv", "benchmark_markdown"]

#: The differentials' summaries in the tables (FDR stays in benchmark.json).
_DIFFERENTIALS = ("garbe", "fnmr_ratio", "fmr_ratio")


def _estimate(entry: Any) -> str:
    if not isinstance(entry, dict) or (entry.get("value") is None and not entry.get("infinite")):
        return "—"
    low, high = entry.get("low"), entry.get("high")
    interval = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
    return ("∞" if entry.get("infinite") else f"{entry['value']:.3f}") + interval  # ∞: a max/min ratio whose least rate is 0


def _differential_reason(row: dict[str, Any], name: str, key: str) -> str | None:
    """Why a backbone's differential summary ``key`` of attribute ``name`` is — or ∞ (None: it has a value)."""
    from frx_plugin.differentials.reasons import summary_reason

    items = ((row.get("analysis") or {}).get("differentials") or {}).get("attributes") or []
    item = next((i for i in items if isinstance(i, dict) and i.get("name") == name), None)
    return summary_reason(item, key) if item is not None else "no differentials measured for this attribute"


def _attributes(document: dict[str, Any]) -> list[str]:
    names: list[str] = []
    for row in document["backbones"]:
        for item in (row.get("analysis") or {}).get("attributes", []):
            if item["name"] not in names:
                names.append(item["name"])
    return names


def _per_attribute(row: dict[str, Any]) -> dict[str, dict[str, Any]]:
    analysis = row.get("analysis") or {}
    out: dict[str, dict[str, Any]] = {}
    for item in analysis.get("attributes", []):
        out.setdefault(item["name"], {})["leakage"] = {"value": item.get("leakage"), "low": item.get("leakage_low"), "high": item.get("leakage_high")}
    for name, estimate in (analysis.get("significance") or {}).items():
        out.setdefault(name, {})["significance"] = estimate
    for name, share in ((analysis.get("error_attribution") or {}).get("all") or {}).items():
        out.setdefault(name, {})["errors"] = share
    for item in (analysis.get("differentials") or {}).get("attributes", []):
        for summary in ("garbe", "fnmr_ratio", "fmr_ratio"):
            out.setdefault(item["name"], {})[summary] = item.get(summary)
    for name, entry in ((analysis.get("recovery") or {}).get("attributes") or {}).items():
        if isinstance(entry, dict) and entry.get("two_stage"):
            out.setdefault(name, {}).update(recovery=entry["two_stage"], recovery_direct=entry.get("direct"),
                                            ceiling=entry.get("real_images"), readable=entry.get("readable"))
    return out


#: The two-stage columns of benchmark.csv (present when a backbone was analysed with --two-stage).
_RECOVERY = ("recovery", "recovery_direct", "ceiling")


def _summary_columns(document: dict[str, Any]) -> list[str]:
    return ["spec", "embedding_dim", "parameters", "ms_per_image"] + [
        f"tar_at_fmr_{f:g}{suffix}" for f in document["fmrs"] for suffix in ("", "_low", "_high")
    ] + ["eer", "eer_low", "eer_high", "error"]


def benchmark_csv(document: dict[str, Any]) -> str:
    """One row per backbone: the headline numbers, then ``leakage.<a>``, ``significance.<a>``, ``errors.<a>``,
    and the demographic differentials ``garbe.<a>``, ``fnmr_ratio.<a>``, ``fmr_ratio.<a>``."""
    names = _attributes(document)
    two_stage = any((row.get("analysis") or {}).get("recovery") for row in document["backbones"])
    measures_ = ("leakage", "significance", "errors") + _DIFFERENTIALS + (_RECOVERY if two_stage else ())
    columns = _summary_columns(document) + [f"{m}.{n}" for m in measures_ for n in names]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in document["backbones"]:
        line: dict[str, Any] = {"spec": row["spec"], "embedding_dim": row.get("embedding_dim"), "parameters": row.get("parameters"),
                                "error": row.get("error") or ""}
        seconds = row.get("embed_seconds_per_image")
        line["ms_per_image"] = None if seconds is None else round(1000 * seconds, 4)
        verification = row.get("verification") or {}
        for f in document["fmrs"]:
            entry = (verification.get("tar") or {}).get(f"{f:g}") or {}
            for suffix, key in (("", "value"), ("_low", "low"), ("_high", "high")):
                line[f"tar_at_fmr_{f:g}{suffix}"] = entry.get(key)
        for suffix, key in (("", "value"), ("_low", "low"), ("_high", "high")):
            line[f"eer{suffix}"] = (verification.get("eer") or {}).get(key)
        for name, measures in _per_attribute(row).items():
            line[f"leakage.{name}"] = (measures.get("leakage") or {}).get("value")
            line[f"significance.{name}"] = (measures.get("significance") or {}).get("value")
            line[f"errors.{name}"] = measures.get("errors")
            for summary in _DIFFERENTIALS:
                entry = measures.get(summary) or {}
                line[f"{summary}.{name}"] = "inf" if entry.get("infinite") else entry.get("value")
            if two_stage:
                line[f"recovery.{name}"] = (measures.get("recovery") or {}).get("value")
                line[f"recovery_direct.{name}"] = (measures.get("recovery_direct") or {}).get("value")
                line[f"ceiling.{name}"] = measures.get("ceiling")
        writer.writerow({k: ("" if v is None else v) for k, v in line.items()})
    return buffer.getvalue()


def _counts(data: dict[str, Any]) -> str:
    attributes = data.get("attributes")
    named = f" ({len(attributes)} attributes: {', '.join(attributes)})" if attributes else ""
    return f"{data['n_samples']:,} samples of {data['n_identities']:,} identities{named}"


def _analysed_line(document: dict[str, Any]) -> str:
    """The first line under the title: what was analysed (the counts, or that the files differ) and the intervals."""
    n, k = document.get("n_samples"), document.get("n_identities")
    counts = f"{n:,} samples of {k:,} identities" if n is not None and k is not None else "the files differ in their samples (below)"
    return f"{counts}; intervals are 95% over {document['n_bootstrap']} identity-bootstrap replicates."


def _first(lines: list[str], *starts: str, about: str | None = None) -> str | None:
    """The first of ``lines`` that starts with one of ``starts`` (and names ``about``, where given), shortened."""
    for line in lines:
        if line.startswith(starts) and (about is None or f"'{about}'" in line):
            return line if len(line) <= 160 else line[:157] + "…"
    return None


def _missing_reason(row: dict[str, Any], name: str, key: str) -> str:
    """Why a backbone's cell of ``key`` for attribute ``name`` is —, from its record's warnings where they say."""
    record = row.get("analysis") or {}
    warnings = [w for w in record.get("warnings") or [] if isinstance(w, str)]
    if key == "leakage":
        return _first(warnings, "attribute ", about=name) or "no held-out value of this attribute (no labelled samples on both sides of a fold)"
    if key in ("significance", "errors"):
        skipped = _first(warnings, "counterfactuals skipped", "error attribution skipped")
        if record.get("counterfactuals") is None:
            return skipped or "no counterfactuals in this pass"
        if key == "errors":
            return skipped or "no explained error of the verification decision changes this attribute"
        return _first(warnings, "counterfactuals: the generator cannot change", about=name) or "no labelled probe row to change"
    if record.get("recovery") is None:  # recovery, recovery_direct, ceiling
        return _first(warnings, "two-stage recovery skipped") or "no two-stage pass (frx benchmark --two-stage)"
    return "the two stages measured no value of this attribute"


def benchmark_markdown(document: dict[str, Any]) -> str:
    """The comparison as Markdown: a summary table, then leakage, significance and error share per attribute."""
    lines = [f"# frx benchmark on {document['probe']}", "", _analysed_line(document), ""]
    files = [row for row in document["backbones"] if row["spec"].startswith("embeddings:") and row.get("data")]
    if files and (len(files) > 1 or len(files) < len(document["backbones"])):  # then each file says what it holds
        lines += [f"- `{row['spec']}`: {_counts(row['data'])}" for row in files] + [""]
    fmrs = document["fmrs"]
    lines.append("| backbone | D | parameters | ms / image | " + " | ".join(f"TAR @ FMR {f:g}" for f in fmrs) + " | EER |")
    lines.append("|---|---:|---:|---:|" + "---|" * (len(fmrs) + 1))
    for row in document["backbones"]:
        if row.get("error"):
            lines.append(f"| `{row['spec']}` | {row.get('embedding_dim') or '—'} | — | — | "
                         + " | ".join("—" for _ in fmrs) + f" | failed: {row['error']} |")
            continue
        verification = row.get("verification") or {}
        seconds = row.get("embed_seconds_per_image")
        parameters = row.get("parameters")
        lines.append(
            f"| `{row['spec']}` | {row.get('embedding_dim')} | {f'{parameters:,}' if parameters else '—'} | "
            f"{'—' if seconds is None else f'{1000 * seconds:.2f}'} | "
            + " | ".join(_estimate((verification.get("tar") or {}).get(f"{f:g}")) for f in fmrs)
            + f" | {_estimate(verification.get('eer'))} |"
        )
    names = _attributes(document)
    good = [row for row in document["backbones"] if not row.get("error")]
    per = {row["spec"]: _per_attribute(row) for row in good}
    for title, key, what in (
        ("Leakage ℓ per attribute", "leakage", "held-out recovery, normalised to [0, 1]; lower keeps less of it"),
        ("Identity significance S_k per attribute", "significance", "how far changing the attribute moves the identity score"),
        ("Share of errors each attribute explains", "errors", "explained errors that changing the attribute alone corrects"),
        ("Demographic differentials: GARBE per attribute", "garbe",
         "the Gini index of the groups' FMR and FNMR at the global threshold (0 = equal error rates); per group in benchmark.json"),
        ("Demographic differentials: FNMR max/min over the groups", "fnmr_ratio",
         "how many times more often the worst group's genuine pairs are rejected than the best group's, at the global threshold"),
        ("Two-stage recovery significance R_k per attribute", "recovery",
         "R_k of the attribute read off faces decoded from the embeddings (E(G(z))); \"unreadable\": the estimator cannot "
         "read it from real faces, so the value says nothing about the representation"),
        ("Direct recovery significance R_k per attribute", "recovery_direct",
         "the same measure from the probe heads h(z), beside the two-stage one"),
        ("The estimator's ceiling per attribute", "ceiling",
         "R_k of the stage-2 estimator on held-out real faces: the most the two-stage value can reach"),
    ):
        if key not in ("leakage", "significance", "errors") and not any(key in per[row["spec"]].get(n, {}) for row in good for n in names):
            continue  # the optional tables (differentials, two stages) of a run without them; the others say why a cell is —
        lines += ["", f"## {title}", "", what + ".", "",
                  "| attribute | " + " | ".join(f"`{row['spec']}`" for row in good) + " |",
                  "|---|" + "---|" * len(good)]
        marks: dict[str, str] = {}  # why a cell is — (or a differential ∞), by its mark
        for name in names:
            cells = []
            for row in good:
                value = per[row["spec"]].get(name, {}).get(key)
                cells.append(_estimate(value) if key not in ("errors", "ceiling") else ("—" if value is None else f"{value:.2f}"))
                if key == "recovery" and per[row["spec"]].get(name, {}).get("readable") is False:
                    cells[-1] += " (unreadable)"
                if key in _DIFFERENTIALS:
                    reason = _differential_reason(row, name, key)
                else:
                    reason = _missing_reason(row, name, key) if cells[-1] == "—" else None
                if reason:
                    cells[-1] += f" ({marks.setdefault(reason, 'abcdefghij'[min(len(marks), 9)])})"
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        if marks:
            lines += [""] + [f"({mark}) {reason}." for reason, mark in marks.items()]
    if document.get("command"):
        lines += ["", f"Command: `{document['command']}`"]
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in document["versions"].items()) + f"; machine: {document['machine']}.", ""]
    return "\n".join(lines)
