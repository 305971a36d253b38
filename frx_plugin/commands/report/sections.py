"""The sections of ``report.html``: training history, analysis, explanations, benchmark, provenance (see :mod:`.page`)."""

from __future__ import annotations

import datetime
import functools
import platform
from typing import Any

from frx_plugin.commands.report.blocks import (
    attribute_label,
    attributes_table,
    attribution_block,
    differentials_block,
    groups_of,
    leakage_bars,
    pass_line,
    recovery_block,
    significance_block,
    verification_line,
)
from frx_plugin.commands.report.markup import (
    BENCHMARK_FILE,
    DECODING_FILE,
    HISTORY_FILE,
    MISSING,
    Cell,
    Page,
    count,
    details,
    escape,
    estimate,
    finite,
    fmr_text,
    html_table,
    number,
    paragraph,
    warning_list,
)

#: What a strip of decoded counterfactual faces shows (frx explain --decoder, the callbacks, frx analyze --two-stage).
DECODED_STRIP_CAPTION = ("counterfactuals.png: each error pair (real faces A, B), their decodings G(A) and G(B), then G(B) with one "
                         "attribute edited in the decoder's latent space and re-embedded, with the score it gets; framed green where "
                         "that change alone flips the decision at τ.")
#: Explained pairs listed in the explanations table.
PAIRS_SHOWN = 10


def history_section(page: Page) -> str:
    from frx_plugin.figures import plot_leakage_history
    from frx_plugin.history import HISTORY_TENSORS, read_history

    try:
        _, records, _ = read_history(page.folder)
    except (ValueError, FileNotFoundError):
        raise  # read_history names the file (SchemaError is a ValueError)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for a damaged file
        raise ValueError(f"{page.folder / HISTORY_TENSORS}: not a readable safetensors file ({exc})") from None
    page.use(HISTORY_FILE)
    page.use(HISTORY_TENSORS)
    records = [r for r in records if isinstance(r, dict)]
    out = ['<section id="history"><h2>Training history</h2>']
    if not records:
        out.append(paragraph("history.json holds no analysis passes yet.", "note"))
    else:
        epochs = [epoch for r in records if isinstance(epoch := r.get("epoch"), int)]
        span = f", epochs {min(epochs)}–{max(epochs)}" if epochs else ""
        out.append(paragraph(f"{len(records)} analysis pass{'es' if len(records) != 1 else ''}{span} (epoch 0 is before training)."))
        plotted = [r for r in records if r.get("attributes") and isinstance(r.get("epoch"), int)]
        out.append("<h3>Leakage across epochs</h3>")
        if plotted:
            out.append(page.figure(lambda path: plot_leakage_history(plotted, path), "normalised leakage of every attribute across epochs",
                                   "Normalised leakage ℓ per attribute across epochs (bands: 95% intervals over identities), and TAR."))
        else:
            out.append(page.existing("leakage.png", "leakage across epochs") or paragraph("no pass with attributes to plot", "note"))
        last = records[-1]
        out.append("<h3>Last pass</h3>")
        out.append(pass_line(last))
        out.append(attributes_table(last.get("attributes") or [], "history-table"))
        out.append(verification_line(last.get("verification")))
        out.append(warning_list(last.get("warnings")))
        with_significance = [r for r in records if r.get("significance")]
        if with_significance:
            record = with_significance[-1]
            path = f", {record['counterfactuals']} counterfactuals" if record.get("counterfactuals") else ""
            out.append(f"<h3>Identity significance (epoch {escape(record.get('epoch'))}{escape(path)})</h3>")
            out.append(significance_block(page, record["significance"], record.get("attributes") or [],
                                           f"identity significance S_k, epoch {record.get('epoch')}", "history-significance-table"))
        with_attribution = [r for r in records if r.get("error_attribution")]
        if with_attribution:
            record = with_attribution[-1]
            out.append(f"<h3>Error attribution (epoch {escape(record.get('epoch'))})</h3>")
            out.append(attribution_block(page, record["error_attribution"], record.get("attributes") or [],
                                          f"error attribution, epoch {record.get('epoch')}", "history-attribution-table"))
        with_differentials = [r for r in records if isinstance(r.get("differentials"), dict)]
        if with_differentials:
            record = with_differentials[-1]
            out.append(f"<h3>Demographic differentials (epoch {escape(record.get('epoch'))})</h3>")
            out.append(differentials_block(page, record["differentials"], "history-differentials-table"))
        with_recovery = [r for r in records if isinstance(r.get("recovery"), dict)]
        if with_recovery:
            record = with_recovery[-1]
            out.append(f"<h3>Two-stage recovery (epoch {escape(record.get('epoch'))})</h3>")
            out.append(recovery_block(page, record["recovery"], f"epoch {record.get('epoch')}"))
        else:
            existing = page.existing("recovery.png", "recovery significance, two-stage and direct")
            if existing:
                out.append("<h3>Two-stage recovery</h3>" + existing)
    decoded = page.existing("decoded.png", "held-out faces beside decoder samples of their embeddings",
                            "decoded.png: held-out faces (left) beside decoder samples G(z) of their embeddings.")
    if decoded:
        out.append("<h3>Decoded faces</h3>" + decoded)
    decoded_passes = [r for r in records if r.get("counterfactuals") == "decoded"] if records else []
    strips = page.existing("counterfactuals.png", "error pairs and their decoded counterfactual faces",
                           DECODED_STRIP_CAPTION) if decoded_passes else None
    if strips:  # the callbacks' strip, written by the passes with decoded counterfactuals
        out.append("<h3>Counterfactual faces (the last pass with decoded counterfactuals)</h3>" + strips)
    out.append("</section>")
    return "".join(out)


def record_provenance(page: Page, document: dict[str, Any], name: str) -> None:
    """The command and versions a results file recorded (analysis.json, explanations.json, benchmark.json)."""
    if document.get("command") and not page.recorded_command:
        page.recorded_command, page.recorded_in = document["command"], name
    if isinstance(document.get("versions"), dict):
        page.recorded_versions[name] = document["versions"]


def analysis_section(page: Page, document: dict[str, Any]) -> str:
    record_provenance(page, document, "analysis.json")
    out = ['<section id="analysis"><h2>Analysis</h2>']
    if document.get("source"):
        out.append(f"<p>Source: <code>{escape(document['source'])}</code></p>")
    options = document.get("options")
    if isinstance(options, dict) and options:
        out.append(paragraph("Options: " + ", ".join(f"{k} {v}" for k, v in options.items()) + "."))
    out.append(pass_line(document))
    attributes = [a for a in document.get("attributes") or [] if isinstance(a, dict)]
    if attributes:
        out.append(leakage_bars(page, attributes, "normalised leakage ℓ per attribute"))
    out.append(attributes_table(attributes, "analysis-table"))
    out.append(verification_line(document.get("verification")))
    estimated = document.get("estimated")
    if isinstance(estimated, dict) and estimated:
        out.append(paragraph("Attributes read off the images by estimators: " + ", ".join(f"{k} ({v})" for k, v in estimated.items()) + "."))
    out.append(warning_list(document.get("warnings")))
    if document.get("significance"):
        path = f" ({document['counterfactuals']} counterfactuals)" if document.get("counterfactuals") else ""
        out.append(f"<h3>Identity significance{escape(path)}</h3>")
        out.append(significance_block(page, document["significance"], attributes, "identity significance S_k", "analysis-significance-table"))
    if document.get("error_attribution"):
        out.append("<h3>Error attribution</h3>")
        out.append(attribution_block(page, document["error_attribution"], attributes, "error attribution", "analysis-attribution-table"))
    if document.get("counterfactuals") == "decoded":
        strips = page.existing("counterfactuals.png", "error pairs and their decoded counterfactual faces", DECODED_STRIP_CAPTION)
        if strips:
            out.append("<h3>Counterfactual faces</h3>" + strips)
    if isinstance(document.get("recovery"), dict):
        out.append("<h3>Two-stage recovery</h3>")
        out.append(recovery_block(page, document["recovery"], ""))
        if "decoded.png" not in page.used:  # frx analyze --two-stage writes it beside analysis.json
            decoded = page.existing("decoded.png", "held-out faces beside decoder samples of their embeddings",
                                    "decoded.png: held-out faces (left) beside decoder samples G(z) of their embeddings.")
            if decoded:
                out.append("<h3>Decoded faces</h3>" + decoded)
    if isinstance(document.get("differentials"), dict):
        out.append("<h3>Demographic differentials</h3>")
        out.append(differentials_block(page, document["differentials"], "analysis-differentials-table"))
    out.append("</section>")
    return "".join(out)


def explanations_section(page: Page, document: dict[str, Any]) -> str:
    record_provenance(page, document, "explanations.json")
    out = ['<section id="explanations"><h2>Explanations</h2>']
    if document.get("source"):
        out.append(f"<p>Source: <code>{escape(document['source'])}</code></p>")
    path = document.get("path")
    how: dict[str | None, str] = {"exact": "exact counterfactuals (a generator re-rendered the faces)",
           "decoded": "decoded counterfactuals (decoders trained on identity-disjoint folds rendered each face edited in their latent "
                      "space, and the model re-embedded it; δ against the unedited decoding)",
           "latent": f"latent counterfactuals (embeddings moved along the probe heads, {document.get('latent_mode') or 'default'} mode)"}
    out.append(paragraph(f"Errors of the decision at FMR {fmr_text(document.get('fmr'))}: accept when the score exceeds τ = "
                  f"{number(document.get('tau'), 4)}; {how.get(path, f'counterfactual path {path}')}."))
    out.append(verification_line(document.get("verification")))
    counts = document.get("counts") or {}
    out.append(html_table(["false non-matches", "false matches", "explained pairs"],
                      [[count(counts.get("false_non_match")), count(counts.get("false_match")), count(counts.get("explained"))]],
                      "explanations-counts", [0, 1, 2]))
    estimated = document.get("estimated")
    if isinstance(estimated, dict) and estimated:
        out.append(paragraph("Attributes read off the images by estimators: " + ", ".join(f"{k} ({v})" for k, v in estimated.items()) + "."))
    pairs = [p for p in document.get("pairs") or [] if isinstance(p, dict)]
    attribution = document.get("attribution")
    if isinstance(attribution, dict) and attribution:
        out.append("<h3>Error attribution</h3>")
        order = [{"name": n} for n in (pairs[0].get("delta") or {})] if pairs else []
        out.append(attribution_block(page, attribution, order, "share of explained errors each attribute decides", "explanations-attribution-table"))
    caption = (DECODED_STRIP_CAPTION if path == "decoded" else
               "counterfactuals.png: each error pair (faces A, B), then B with one attribute changed; framed green where that "
               "change alone flips the decision at τ.")
    figure = page.existing("counterfactuals.png", "error pairs and their counterfactual faces", caption)
    if figure:
        out.append("<h3>Counterfactual faces</h3>" + figure)
    out.append("<h3>Explained pairs</h3>")
    if pairs:
        shown = pairs[:PAIRS_SHOWN]
        out.append(paragraph(f"The first {len(shown)} of {len(pairs)} explained pairs (worst first within each kind).", "note"))
        rows = []
        for entry in shown:
            pair = entry.get("pair") or []
            kinds: dict[str | None, str] = {"false_non_match": "false non-match", "false_match": "false match"}
            kind = kinds.get(entry.get("kind"), entry.get("kind") or MISSING)
            deciding = entry.get("deciding") or []
            rows.append([", ".join(str(i) for i in pair) or MISSING, ", ".join(str(i) for i in entry.get("identities") or []) or MISSING,
                         kind, number(entry.get("score"), 4), number(entry.get("tau"), 4),
                         ", ".join(deciding) if deciding else "none alone"])
        out.append(html_table(["pair", "identities", "kind", "score", "τ", "deciding attributes"], rows, "explanations-pairs", [3, 4]))
    else:
        out.append(paragraph("no error pairs were explained", "note"))
    out.append("</section>")
    return "".join(out)


def _benchmark_table(rows: list[dict[str, Any]], fmrs: list[Any]) -> str:
    """One row per backbone: D, parameters, cost, TAR at each FMR and the EER (a failed one: its error)."""
    headers = ["backbone", "D", "parameters", "ms / image"] + [f"TAR @ FMR {f:g} (95% CI)" for f in fmrs] + ["EER (95% CI)"]
    table_rows = []
    for row in rows:
        if row.get("error"):
            table_rows.append([row.get("spec", MISSING), Cell(f"failed: {row['error']}", len(headers) - 1, "error")])
            continue
        verification = row.get("verification") or {}
        tar = verification.get("tar") or {}
        seconds = finite(row.get("embed_seconds_per_image"))
        table_rows.append([row.get("spec", MISSING), count(row.get("embedding_dim")), count(row.get("parameters")),
                           MISSING if seconds is None else f"{1000 * seconds:.2f}"]
                          + [estimate(tar.get(f"{f:g}")) for f in fmrs] + [estimate(verification.get("eer"))])
    return html_table(headers, table_rows, "benchmark-table", range(1, len(headers)))


def _garbe_of(row: dict[str, Any], name: str) -> Any:
    """A backbone's GARBE of attribute ``name`` (its estimate), or ``None``."""
    items = (row["analysis"].get("differentials") or {}).get("attributes") or []
    return next((a.get("garbe") for a in items if isinstance(a, dict) and a.get("name") == name), None)


def benchmark_section(page: Page, document: dict[str, Any]) -> str:
    from frx_plugin.figures import plot_estimates

    record_provenance(page, document, BENCHMARK_FILE)
    page.machine = document.get("machine")
    rows = document.get("backbones")
    if not isinstance(rows, list):
        raise ValueError(f"{page.folder / BENCHMARK_FILE}: field 'backbones' must be a list")
    rows = [r for r in rows if isinstance(r, dict)]
    fmrs = [f for f in document.get("fmrs") or [0.001, 0.0001] if finite(f) is not None]
    out = ['<section id="benchmark"><h2>Benchmark</h2>']
    intro = (f"Probe set {document.get('probe') or MISSING}: {count(document.get('n_samples'))} samples of "
             f"{count(document.get('n_identities'))} identities")
    if document.get("n_bootstrap") is not None:
        intro += f"; intervals are 95% over {count(document['n_bootstrap'])} identity-bootstrap replicates"
    out.append(paragraph(intro + "."))
    out.append(_benchmark_table(rows, fmrs))
    estimated = document.get("estimated")
    if isinstance(estimated, dict) and estimated:
        out.append(paragraph("Attributes read off the images by estimators: " + ", ".join(f"{k} ({v})" for k, v in estimated.items()) + "."))
    measured = [r for r in rows if not r.get("error") and isinstance(r.get("analysis"), dict)]
    if not measured:
        out.append(paragraph("no backbone was analysed; nothing to compare", "note"))
        out.append("</section>")
        return "".join(out)
    specs = [str(r.get("spec", f"backbone {i + 1}")) for i, r in enumerate(measured)]
    attributes: list[dict[str, Any]] = []
    for r in measured:
        for a in r["analysis"].get("attributes") or []:
            if isinstance(a, dict) and a.get("name") not in {b.get("name") for b in attributes}:
                attributes.append(a)
    names = [a["name"] for a in attributes]
    groups = groups_of(attributes)
    labels = [attribute_label(n, groups.get(n)) for n in names]

    def leakage_of(r: dict[str, Any], name: str) -> Any:
        item = next((a for a in r["analysis"].get("attributes") or [] if isinstance(a, dict) and a.get("name") == name), None)
        return None if item is None else {"value": item.get("leakage"), "low": item.get("leakage_low"), "high": item.get("leakage_high")}

    measures = (
        ("Leakage per attribute", "normalised leakage ℓ", (0.0, 1.05), leakage_of, "benchmark-leakage",
         "Normalised leakage ℓ per attribute and backbone, with 95% intervals over identities."),
        ("Identity significance per attribute", "identity significance S_k", None,
         lambda r, n: (r["analysis"].get("significance") or {}).get(n), "benchmark-significance",
         "Identity significance S_k per attribute and backbone, with 95% intervals."),
        ("Error attribution per attribute", "share of explained errors", (0.0, 1.05),
         lambda r, n: ((r["analysis"].get("error_attribution") or {}).get("all") or {}).get(n), "benchmark-errors",
         "Share of each backbone's explained verification errors that each attribute decides on its own."),
        ("Demographic differentials per attribute", "GARBE", None, _garbe_of, "benchmark-garbe",
         "GARBE per attribute and backbone: the Gini index of the groups' FMR and FNMR at the global threshold (0: equal), "
         "with 95% intervals."),
    )
    for heading, ylabel, ylim, value_of, table_id, caption in measures:
        out.append(f"<h3>{escape(heading)}</h3>")
        series = {spec: [value_of(r, n) for n in names] for spec, r in zip(specs, measured)}
        has_value = any(finite(v.get("value") if isinstance(v, dict) else v) is not None for values in series.values() for v in values)
        if not names or not has_value:
            out.append(paragraph(f"no backbone recorded {ylabel}", "note"))
            continue
        out.append(page.figure(functools.partial(plot_estimates, labels, series, ylabel=ylabel, ylim=ylim),
                               f"{ylabel} per attribute, one bar per backbone", caption))
        numbers = [[n] + [estimate(series[s][i]) for s in specs] for i, n in enumerate(names)]
        out.append(details("numbers", html_table(["attribute"] + specs, numbers, table_id, range(1, len(specs) + 1))))
    for spec, r in zip(specs, measured):
        if isinstance(r["analysis"].get("differentials"), dict):
            out.append(details(f"demographic differentials of {spec}",
                               differentials_block(page, r["analysis"]["differentials"], f"benchmark-differentials-{specs.index(spec)}")))
    for i, (spec, r) in enumerate(zip(specs, measured)):
        if isinstance(r["analysis"].get("recovery"), dict):
            out.append(f"<h3>Two-stage recovery of {escape(spec)}</h3>")
            out.append(recovery_block(page, r["analysis"]["recovery"], spec, f"benchmark-recovery-{i}"))
    for spec, r in zip(specs, measured):
        notes = list(r["analysis"].get("warnings") or []) + list((r.get("verification") or {}).get("notes") or [])
        if notes:
            out.append(details(f"warnings of {spec}", warning_list(notes)))
    out.append("</section>")
    return "".join(out)


#: The figures frx decode writes, with their captions.
DECODING_FIGURES = (
    ("faces.png", "faces and their decodings", "faces.png: the first faces (top) and their decodings G(z) (bottom)."),
    ("directions.png", "decodings of the principal directions",
     "directions.png: decodings of the embeddings' top principal directions e_k (their share of the variance) and of mean + e_k."),
    ("random.png", "decodings of random unit vectors", "random.png: decodings of random unit vectors."),
)


def decoding_section(page: Page, document: dict[str, Any]) -> str:
    """``frx decode``'s results: what was decoded and how, the fits, the identity similarity, the figures."""
    out = ['<section id="decoding"><h2>Decoding</h2>']
    if document.get("source"):
        out.append(f"<p>Source: <code>{escape(document['source'])}</code></p>")
    out.append(f"<p>Decoder: <code>{escape(document.get('decoder'))}</code></p>")
    how = {"trained": f"trained for the model on {document.get('folds')} identity-disjoint folds ({document.get('steps')} steps each); "
                      "each face decoded by the decoder that never saw its fold",
           "as saved": "used as saved (no training): the decoder was made for this face model"}
    mode = str(document.get("mode") or MISSING)
    out.append(paragraph(f"Decoder {how.get(mode, mode)}."))
    similarity = document.get("identity_similarity") or {}
    shape = document.get("image_shape") or []
    out.append(html_table(["decoded", "embeddings", "identities", "image size", "cos(f(x̂), z) mean", "min", "max"],
                          [[count(document.get("n")), count(document.get("n_embeddings")), count(document.get("identities")),
                            "×".join(str(v) for v in shape) or MISSING, number(similarity.get("mean")), number(similarity.get("min")),
                            number(similarity.get("max"))]], "decoding-summary", [0, 1, 2, 4, 5, 6]))
    fits = document.get("fits") or {}
    if isinstance(fits, dict) and fits:
        rows = [[fold, count(fit.get("steps")), number(fit.get("identity_loss_start")), number(fit.get("identity_loss_end")),
                 number(fit.get("pixel_loss_start")), number(fit.get("pixel_loss_end"))] for fold, fit in fits.items()]
        out.append("<h3>Training of the decoder</h3>")
        out.append(html_table(["fold", "steps", "identity loss, first 10%", "last 10%", "pixel MSE, first 10%", "last 10%"], rows,
                              "decoding-fits", [1, 2, 3, 4, 5]))
    if isinstance(document.get("versions"), dict):
        page.recorded_versions[DECODING_FILE] = document["versions"]
    figures = [page.existing(name, alt, caption) for name, alt, caption in DECODING_FIGURES]
    if any(figures):
        out.append("<h3>Decoded faces</h3>" + "".join(figures))
    out.append("</section>")
    return "".join(out)


def provenance_section(page: Page, command: str | None) -> str:
    import matplotlib
    import torch

    from frx_plugin import __version__

    if command:
        command_line = f"<p>Command: <code>{escape(command)}</code></p>"
    elif page.recorded_command:
        command_line = f"<p>Command (recorded in {page.recorded_in}): <code>{escape(page.recorded_command)}</code></p>"
    else:
        command_line = ("<p>Command: not recorded (the files were written by a training callback or by Python code, "
                        "not by an <code>frx</code> command)</p>")
    now = {"frx": __version__, "python": platform.python_version(), "torch": torch.__version__, "matplotlib": matplotlib.__version__}
    out = ['<section id="provenance"><h2>Provenance</h2>', command_line, "<h3>Versions</h3>"]
    sources = [("this report", now)] + [(f"recorded in {name}", versions) for name, versions in page.recorded_versions.items()]
    packages: list[str] = []
    for _, versions in sources:
        packages += [k for k in versions if k not in packages]
    out.append(html_table(["package"] + [s for s, _ in sources], [[p] + [str(v.get(p, MISSING)) for _, v in sources] for p in packages],
                      "provenance-versions"))
    if page.machine:
        out.append(paragraph(f"Machine (recorded in {BENCHMARK_FILE}): {page.machine}."))
    generated = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    out.append(paragraph(f"Generated {generated} from the folder {page.folder.resolve()}."))
    out.append("<h3>Files used</h3>")
    rows = [[name, count((page.folder / name).stat().st_size)] for name in page.used]
    out.append(html_table(["file", "bytes"], rows, "provenance-files", [1]))
    out.append("</section>")
    return "".join(out)
