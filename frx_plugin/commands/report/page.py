"""``frx report DIR``: one self-contained ``report.html`` for whatever frx wrote into a folder.

The page reads the files it finds and renders a section for each, in this order:

1. **Training history** (``history.json`` + ``history.safetensors``: ``frx demo``, the Lightning and
   arcface_torch callbacks): leakage across epochs, the last pass as a table, identity significance
   and error attribution of the last pass that measured them, the two-stage recovery of the last
   pass that has one, and ``decoded.png`` when present;
2. **Analysis** (``analysis.json``, ``frx.analysis/1``: ``frx analyze``): leakage bars and table, verification;
3. **Explanations** (``explanations.json``, ``frx.explanations/1``: ``frx explain``): counts, τ, error
   attribution, ``counterfactuals.png`` when present, the first explained pairs;
4. **Benchmark** (``benchmark.json``, ``frx.benchmark/1``: ``frx benchmark``): one row per backbone,
   and bars comparing the backbones' leakage, identity significance and error attribution;
5. **Provenance**: the command, the versions (now and as the files recorded them), the time, the files.

The page opens with no network: every figure is a PNG drawn by matplotlib (:mod:`frx_plugin.figures`)
and embedded as a ``data:`` URI, the style sheet is inline, and nothing links outside the page. A
small inline script sets ``document.body.dataset.figures = "<loaded>/<total>"`` once the page has
loaded (for a headless-browser check, ``benchmarks/report_screenshot.py``); the page reads the same
without it. Missing numbers (JSON's ``null``) read "—".
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import math
import platform
import struct
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["write_report", "REPORT_FILE", "KNOWN_FILES"]

REPORT_FILE = "report.html"
HISTORY_FILE = "history.json"
ANALYSIS_FILE = "analysis.json"
EXPLANATIONS_FILE = "explanations.json"
BENCHMARK_FILE = "benchmark.json"
#: The files whose presence makes a folder reportable, in the order their sections appear.
KNOWN_FILES = (HISTORY_FILE, ANALYSIS_FILE, EXPLANATIONS_FILE, BENCHMARK_FILE)
FORMATS = {ANALYSIS_FILE: "frx.analysis/1", EXPLANATIONS_FILE: "frx.explanations/1", BENCHMARK_FILE: "frx.benchmark/1"}
#: Explained pairs listed in the explanations table.
PAIRS_SHOWN = 10
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MISSING = "—"
ERROR_KINDS = (("all", "all errors"), ("false_non_match", "false non-match"), ("false_match", "false match"))

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 0 auto;
       max-width: 1180px; padding: 1.2em 1.6em 3em; color: #1d1d1f; background: #fff; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.3em; border-bottom: 2px solid #d0d7de; padding-bottom: 0.2em; margin-top: 2em; }
h3 { font-size: 1.05em; margin-top: 1.6em; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.86em; }
th, td { border: 1px solid #d0d7de; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f5f7; }
td.number { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.error { color: #a40e26; background: #fff5f5; }
figure { margin: 0.8em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { font-size: 0.85em; color: #57606a; }
.note { color: #57606a; font-size: 0.9em; }
.warnings li { color: #7d4e00; }
code { background: #f3f5f7; padding: 0.05em 0.3em; border-radius: 3px; word-break: break-all; }
details { margin: 0.4em 0 1em; }
summary { cursor: pointer; color: #0550ae; }
"""

#: Counts the figures that decoded once the page has loaded (for headless-browser checks); harmless without JS.
SCRIPT = """
window.addEventListener("load", function () {
  var images = document.getElementsByTagName("img"), loaded = 0;
  for (var i = 0; i < images.length; i++) {
    if (images[i].complete && images[i].naturalWidth > 0) { loaded++; }
  }
  document.body.dataset.figures = loaded + "/" + images.length;
});
"""


# ------------------------------------------------------------------------------------ formatting


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _finite(value: Any) -> float | None:
    """``value`` as a finite float, or None (JSON null, NaN, text, booleans)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _number(value: Any, digits: int = 3) -> str:
    value = _finite(value)
    return MISSING if value is None else f"{value:.{digits}f}"


def _estimate(entry: Any, digits: int = 3) -> str:
    """``value [low, high]`` of an ``{"value", "low", "high"}`` entry (or a bare number); "—" when missing."""
    if not isinstance(entry, dict):
        return _number(entry, digits)
    value = _number(entry.get("value"), digits)
    if value == MISSING:
        return MISSING
    low, high = _finite(entry.get("low")), _finite(entry.get("high"))
    if low is None or high is None:
        return value
    return f"{value} [{low:.{digits}f}, {high:.{digits}f}]"


def _count(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return MISSING
    return f"{int(value):,}"


def _fmr(value: Any) -> str:
    value = _finite(value)
    return MISSING if value is None else f"{value:g}"


class _Cell:
    """A table cell: text (escaped when written), its column span, and a CSS class."""

    def __init__(self, text: Any, colspan: int = 1, cls: str = "") -> None:
        self.text, self.colspan, self.cls = text, colspan, cls


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], table_id: str = "", numeric: Sequence[int] = ()) -> str:
    """An HTML table; cells are text or :class:`_Cell`; columns in ``numeric`` are right-aligned."""
    out = [f'<table id="{_e(table_id)}">' if table_id else "<table>", "<thead><tr>"]
    out += [f"<th>{_e(h)}</th>" for h in headers]
    out.append("</tr></thead><tbody>")
    for row in rows:
        out.append("<tr>")
        column = 0
        for cell in row:
            cell = cell if isinstance(cell, _Cell) else _Cell(cell)
            cls = cell.cls or ("number" if column in numeric else "")
            attributes = (f' colspan="{cell.colspan}"' if cell.colspan > 1 else "") + (f' class="{cls}"' if cls else "")
            out.append(f"<td{attributes}>{_e(cell.text)}</td>")
            column += cell.colspan
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _p(text: str, cls: str = "") -> str:
    return f'<p class="{cls}">{_e(text)}</p>' if cls else f"<p>{_e(text)}</p>"


def _warnings(messages: Any) -> str:
    if not isinstance(messages, list) or not messages:
        return ""
    return '<ul class="warnings">' + "".join(f"<li>{_e(m)}</li>" for m in messages) + "</ul>"


def _details(summary: str, body: str) -> str:
    return f"<details><summary>{_e(summary)}</summary>{body}</details>"


def _png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's header, or None when ``data`` is not a PNG."""
    if len(data) < 24 or not data.startswith(PNG_MAGIC) or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def _img(data: bytes, alt: str, caption: str = "") -> str:
    width, height = _png_size(data) or (0, 0)
    size = f' width="{width}" height="{height}"' if width and height else ""
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    figure = f'<figure><img src="{uri}" alt="{_e(alt)}"{size}>'
    return figure + (f"<figcaption>{_e(caption)}</figcaption>" if caption else "") + "</figure>"


# ------------------------------------------------------------------------------------ reading


def _load_json(path: Path) -> dict[str, Any]:
    """A frx JSON file of the layout its name implies; a damaged or foreign file is a ``ValueError`` naming it."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc})") from None
    expected = FORMATS[path.name]
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected a JSON object of format {expected!r}, got {type(document).__name__}")
    if document.get("format") != expected:
        raise ValueError(f"{path}: field 'format' must be {expected!r}, got {document.get('format')!r}")
    return document


class _Page:
    """What the sections share: the folder, a scratch folder for figures, the files read, recorded versions."""

    def __init__(self, folder: Path, scratch: Path) -> None:
        self.folder = folder
        self.scratch = scratch
        self.used: list[str] = []
        self.recorded_versions: dict[str, dict[str, Any]] = {}
        self.recorded_command: str | None = None
        self.machine: str | None = None
        self._figures = 0

    def use(self, name: str) -> None:
        if name not in self.used and (self.folder / name).is_file():
            self.used.append(name)

    def figure(self, plot: Callable[[Path], Any], alt: str, caption: str = "") -> str:
        """Draw a figure with ``plot(path)`` into the scratch folder and embed it; a plot that cannot be drawn is a note."""
        self._figures += 1
        path = self.scratch / f"figure{self._figures}.png"
        try:
            plot(path)
        except ValueError as exc:  # the figure functions refuse empty inputs with a ValueError
            return _p(f"no figure: {exc}", "note")
        return _img(path.read_bytes(), alt, caption)

    def existing(self, name: str, alt: str, caption: str = "") -> str:
        """Embed the folder's PNG ``name`` ("" when absent; a note when it is not a PNG)."""
        path = self.folder / name
        if not path.is_file():
            return ""
        data = path.read_bytes()
        if _png_size(data) is None:
            return _p(f"{name} is not a PNG image; left out", "note")
        self.use(name)
        return _img(data, alt, caption)


# ------------------------------------------------------------------------------------ shared parts


def _attribute_label(name: str, group: Any) -> str:
    return f"{name}\n({group})" if group else name


def _attributes_table(attributes: Sequence[dict[str, Any]], table_id: str) -> str:
    """One row per attribute: group, kind, metric with its interval, leakage ℓ with its interval (and notes)."""
    balanced = any((a.get("extra") or {}).get("balanced_accuracy") is not None for a in attributes)
    notes = any(a.get("reason") for a in attributes)
    headers = ["attribute", "group", "kind", "metric", "value (95% CI)", "leakage ℓ (95% CI)"]
    headers += ["balanced accuracy"] * balanced + ["n"] + ["note"] * notes
    rows = []
    for a in attributes:
        row = [a.get("name", MISSING), a.get("group") or MISSING, a.get("kind") or MISSING, a.get("metric") or MISSING,
               _estimate({"value": a.get("value"), "low": a.get("low"), "high": a.get("high")}),
               _estimate({"value": a.get("leakage"), "low": a.get("leakage_low"), "high": a.get("leakage_high")})]
        if balanced:
            row.append(_number((a.get("extra") or {}).get("balanced_accuracy")))
        row.append(_count(a.get("n")))
        if notes:
            row.append(a.get("reason") or "")
        rows.append(row)
    numeric = [4, 5] + ([6, 7] if balanced else [6])
    return _table(headers, rows, table_id, numeric)


def _verification_line(verification: Any) -> str:
    if not isinstance(verification, dict):
        return _p("verification: not measured", "note")
    text = f"Verification: TAR {_number(verification.get('tar'))} at FMR {_fmr(verification.get('fmr'))}"
    if verification.get("threshold") is not None:
        text += f", threshold τ = {_number(verification.get('threshold'), 4)}"
    text += f" ({_count(verification.get('genuine_pairs'))} genuine, {_count(verification.get('impostor_pairs'))} impostor pairs)."
    return _p(text)


def _pass_line(record: dict[str, Any]) -> str:
    parts = []
    if record.get("epoch") is not None:
        parts.append(f"epoch {record['epoch']}")
    if record.get("global_step") is not None:
        parts.append(f"step {_count(record['global_step'])}")
    parts.append(f"{_count(record.get('n_samples'))} samples of {_count(record.get('n_identities'))} identities")
    if record.get("n_folds") is not None:
        parts.append(f"{record['n_folds']} identity-disjoint folds")
    if record.get("head"):
        parts.append(f"{record['head']} heads")
    if record.get("counterfactuals"):
        parts.append(f"{record['counterfactuals']} counterfactuals")
    return _p(", ".join(parts) + ".")


def _ordered_names(attributes: Sequence[dict[str, Any]], *mappings: Any) -> list[str]:
    """Attribute names in the record's order, then any others the mappings name."""
    names = [a["name"] for a in attributes if isinstance(a, dict) and "name" in a]
    for mapping in mappings:
        for name in mapping or {}:
            if name not in names:
                names.append(name)
    return names


def _groups(attributes: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {a.get("name"): a.get("group") for a in attributes if isinstance(a, dict)}


def _leakage_bars(page: _Page, attributes: Sequence[dict[str, Any]], title: str) -> str:
    from frx_plugin.figures import plot_estimates

    entries = [{"value": a.get("leakage"), "low": a.get("leakage_low"), "high": a.get("leakage_high")} for a in attributes]
    labels = [_attribute_label(a.get("name", "?"), a.get("group")) for a in attributes]
    return page.figure(lambda path: plot_estimates(labels, {"": entries}, path, ylabel="normalised leakage ℓ", title=title, ylim=(0.0, 1.05)),
                       "normalised leakage per attribute with 95% intervals",
                       "Normalised leakage ℓ per attribute (held out, identity-disjoint folds); bars are 95% bootstrap intervals over identities.")


def _significance_block(page: _Page, significance: dict[str, Any], attributes: Sequence[dict[str, Any]], title: str, table_id: str) -> str:
    from frx_plugin.figures import plot_estimates

    names = [n for n in _ordered_names(attributes, significance) if n in significance]
    groups = _groups(attributes)
    labels = [_attribute_label(n, groups.get(n)) for n in names]
    entries = [significance[n] for n in names]
    figure = page.figure(lambda path: plot_estimates(labels, {"": entries}, path, ylabel="identity significance S_k", title=title),
                         "identity significance per attribute with 95% intervals",
                         "Identity significance S_k: how far changing the attribute alone moves the embedding, relative to changing identity.")
    table = _table(["attribute", "S_k (95% CI)"], [[n, _estimate(significance[n])] for n in names], table_id, [1])
    return figure + _details("numbers", table)


def _attribution_block(page: _Page, attribution: dict[str, Any], attributes: Sequence[dict[str, Any]], title: str, table_id: str) -> str:
    from frx_plugin.figures import plot_estimates

    kinds = [(key, label) for key, label in ERROR_KINDS if isinstance(attribution.get(key), dict)]
    if not kinds:
        return _p("no error attribution recorded", "note")
    names = _ordered_names(attributes, *(attribution[k] for k, _ in kinds))
    names = [n for n in names if any(n in attribution[k] for k, _ in kinds)]
    groups = _groups(attributes)
    labels = [_attribute_label(n, groups.get(n)) for n in names]
    series = {label: [attribution[key].get(n) for n in names] for key, label in kinds}
    figure = page.figure(lambda path: plot_estimates(labels, series, path, ylabel="share of explained errors", title=title, ylim=(0.0, 1.05)),
                         "share of explained errors each attribute decides",
                         "Share of the explained errors whose decision each attribute flips on its own (an error can have several).")
    rows = [[n] + [_number(attribution[key].get(n)) for key, _ in kinds] for n in names]
    table = _table(["attribute"] + [label for _, label in kinds], rows, table_id, range(1, len(kinds) + 1))
    return figure + _details("numbers", table)


def _recovery_block(page: _Page, recovery: dict[str, Any], title: str) -> str:
    from frx_plugin.figures import plot_recovery

    figure = page.figure(lambda path: plot_recovery(recovery, path, title=title), "recovery significance, two-stage and direct",
                         "Recovery significance R_k: two-stage E(G(z)) beside the direct probe heads h(z), with 95% intervals.")
    entries = recovery.get("attributes") or {}
    rows = []
    for name, entry in entries.items():
        entry = entry if isinstance(entry, dict) else {}
        rows.append([name, entry.get("group") or MISSING, _estimate(entry.get("two_stage")), _estimate(entry.get("direct")),
                     _number(entry.get("real_images")), "yes" if entry.get("readable", "two_stage" in entry) else "no"])
    table = _table(["attribute", "group", "two-stage R_k (95% CI)", "direct R_k (95% CI)", "estimator on real faces", "readable"],
                   rows, "recovery-table", [2, 3, 4])
    return figure + _details("numbers", table) + _warnings(recovery.get("errors"))


# ------------------------------------------------------------------------------------ sections


def _history_section(page: _Page) -> str:
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
        out.append(_p("history.json holds no analysis passes yet.", "note"))
    else:
        epochs = [r.get("epoch") for r in records if isinstance(r.get("epoch"), int)]
        span = f", epochs {min(epochs)}–{max(epochs)}" if epochs else ""
        out.append(_p(f"{len(records)} analysis pass{'es' if len(records) != 1 else ''}{span} (epoch 0 is before training)."))
        plotted = [r for r in records if r.get("attributes") and isinstance(r.get("epoch"), int)]
        out.append("<h3>Leakage across epochs</h3>")
        if plotted:
            out.append(page.figure(lambda path: plot_leakage_history(plotted, path), "normalised leakage of every attribute across epochs",
                                   "Normalised leakage ℓ per attribute across epochs (bands: 95% intervals over identities), and TAR."))
        else:
            out.append(page.existing("leakage.png", "leakage across epochs") or _p("no pass with attributes to plot", "note"))
        last = records[-1]
        out.append("<h3>Last pass</h3>")
        out.append(_pass_line(last))
        out.append(_attributes_table(last.get("attributes") or [], "history-table"))
        out.append(_verification_line(last.get("verification")))
        out.append(_warnings(last.get("warnings")))
        with_significance = [r for r in records if r.get("significance")]
        if with_significance:
            record = with_significance[-1]
            out.append(f"<h3>Identity significance (epoch {_e(record.get('epoch'))})</h3>")
            out.append(_significance_block(page, record["significance"], record.get("attributes") or [],
                                           f"identity significance S_k, epoch {record.get('epoch')}", "history-significance-table"))
        with_attribution = [r for r in records if r.get("error_attribution")]
        if with_attribution:
            record = with_attribution[-1]
            out.append(f"<h3>Error attribution (epoch {_e(record.get('epoch'))})</h3>")
            out.append(_attribution_block(page, record["error_attribution"], record.get("attributes") or [],
                                          f"error attribution, epoch {record.get('epoch')}", "history-attribution-table"))
        with_recovery = [r for r in records if isinstance(r.get("recovery"), dict)]
        if with_recovery:
            record = with_recovery[-1]
            out.append(f"<h3>Two-stage recovery (epoch {_e(record.get('epoch'))})</h3>")
            out.append(_recovery_block(page, record["recovery"], f"epoch {record.get('epoch')}"))
        else:
            existing = page.existing("recovery.png", "recovery significance, two-stage and direct")
            if existing:
                out.append("<h3>Two-stage recovery</h3>" + existing)
    decoded = page.existing("decoded.png", "held-out faces beside decoder samples of their embeddings",
                            "decoded.png: held-out faces (left) beside decoder samples G(z) of their embeddings.")
    if decoded:
        out.append("<h3>Decoded faces</h3>" + decoded)
    out.append("</section>")
    return "".join(out)


def _analysis_section(page: _Page, document: dict[str, Any]) -> str:
    out = ['<section id="analysis"><h2>Analysis</h2>']
    if document.get("source"):
        out.append(f"<p>Source: <code>{_e(document['source'])}</code></p>")
    options = document.get("options")
    if isinstance(options, dict) and options:
        out.append(_p("Options: " + ", ".join(f"{k} {v}" for k, v in options.items()) + "."))
    out.append(_pass_line(document))
    attributes = [a for a in document.get("attributes") or [] if isinstance(a, dict)]
    if attributes:
        out.append(_leakage_bars(page, attributes, "normalised leakage ℓ per attribute"))
    out.append(_attributes_table(attributes, "analysis-table"))
    out.append(_verification_line(document.get("verification")))
    estimated = document.get("estimated")
    if isinstance(estimated, dict) and estimated:
        out.append(_p("Attributes read off the images by estimators: " + ", ".join(f"{k} ({v})" for k, v in estimated.items()) + "."))
    out.append(_warnings(document.get("warnings")))
    if document.get("significance"):
        out.append("<h3>Identity significance</h3>")
        out.append(_significance_block(page, document["significance"], attributes, "identity significance S_k", "analysis-significance-table"))
    if document.get("error_attribution"):
        out.append("<h3>Error attribution</h3>")
        out.append(_attribution_block(page, document["error_attribution"], attributes, "error attribution", "analysis-attribution-table"))
    if isinstance(document.get("recovery"), dict):
        out.append("<h3>Two-stage recovery</h3>")
        out.append(_recovery_block(page, document["recovery"], ""))
    out.append("</section>")
    return "".join(out)


def _explanations_section(page: _Page, document: dict[str, Any]) -> str:
    out = ['<section id="explanations"><h2>Explanations</h2>']
    if document.get("source"):
        out.append(f"<p>Source: <code>{_e(document['source'])}</code></p>")
    path = document.get("path")
    how = {"exact": "exact counterfactuals (a generator re-rendered the faces)",
           "latent": f"latent counterfactuals (embeddings moved along the probe heads, {document.get('latent_mode') or 'default'} mode)"}
    out.append(_p(f"Errors of the decision at FMR {_fmr(document.get('fmr'))}: accept when the score exceeds τ = "
                  f"{_number(document.get('tau'), 4)}; {how.get(path, f'counterfactual path {path}')}."))
    out.append(_verification_line(document.get("verification")))
    counts = document.get("counts") or {}
    out.append(_table(["false non-matches", "false matches", "explained pairs"],
                      [[_count(counts.get("false_non_match")), _count(counts.get("false_match")), _count(counts.get("explained"))]],
                      "explanations-counts", [0, 1, 2]))
    estimated = document.get("estimated")
    if isinstance(estimated, dict) and estimated:
        out.append(_p("Attributes read off the images by estimators: " + ", ".join(f"{k} ({v})" for k, v in estimated.items()) + "."))
    pairs = [p for p in document.get("pairs") or [] if isinstance(p, dict)]
    attribution = document.get("attribution")
    if isinstance(attribution, dict) and attribution:
        out.append("<h3>Error attribution</h3>")
        order = [{"name": n} for n in (pairs[0].get("delta") or {})] if pairs else []
        out.append(_attribution_block(page, attribution, order, "share of explained errors each attribute decides", "explanations-attribution-table"))
    figure = page.existing("counterfactuals.png", "error pairs and their counterfactual faces",
                           "counterfactuals.png: each error pair (faces A, B), then B with one attribute changed; framed green where that "
                           "change alone flips the decision at τ.")
    if figure:
        out.append("<h3>Counterfactual faces</h3>" + figure)
    out.append("<h3>Explained pairs</h3>")
    if pairs:
        shown = pairs[:PAIRS_SHOWN]
        out.append(_p(f"The first {len(shown)} of {len(pairs)} explained pairs (worst first within each kind).", "note"))
        rows = []
        for entry in shown:
            pair = entry.get("pair") or []
            kind = {"false_non_match": "false non-match", "false_match": "false match"}.get(entry.get("kind"), entry.get("kind") or MISSING)
            deciding = entry.get("deciding") or []
            rows.append([", ".join(str(i) for i in pair) or MISSING, ", ".join(str(i) for i in entry.get("identities") or []) or MISSING,
                         kind, _number(entry.get("score"), 4), _number(entry.get("tau"), 4),
                         ", ".join(deciding) if deciding else "none alone"])
        out.append(_table(["pair", "identities", "kind", "score", "τ", "deciding attributes"], rows, "explanations-pairs", [3, 4]))
    else:
        out.append(_p("no error pairs were explained", "note"))
    out.append("</section>")
    return "".join(out)


def _benchmark_section(page: _Page, document: dict[str, Any]) -> str:
    from frx_plugin.figures import plot_estimates

    page.recorded_command = document.get("command")
    if isinstance(document.get("versions"), dict):
        page.recorded_versions[BENCHMARK_FILE] = document["versions"]
    page.machine = document.get("machine")
    rows = document.get("backbones")
    if not isinstance(rows, list):
        raise ValueError(f"{page.folder / BENCHMARK_FILE}: field 'backbones' must be a list")
    rows = [r for r in rows if isinstance(r, dict)]
    fmrs = [f for f in document.get("fmrs") or [0.001, 0.0001] if _finite(f) is not None]
    out = ['<section id="benchmark"><h2>Benchmark</h2>']
    intro = f"Probe set {document.get('probe') or MISSING}: {_count(document.get('n_samples'))} samples of {_count(document.get('n_identities'))} identities"
    if document.get("n_bootstrap") is not None:
        intro += f"; intervals are 95% over {_count(document['n_bootstrap'])} identity-bootstrap replicates"
    out.append(_p(intro + "."))
    headers = ["backbone", "D", "parameters", "ms / image"] + [f"TAR @ FMR {f:g} (95% CI)" for f in fmrs] + ["EER (95% CI)"]
    table_rows = []
    for row in rows:
        if row.get("error"):
            table_rows.append([row.get("spec", MISSING), _Cell(f"failed: {row['error']}", len(headers) - 1, "error")])
            continue
        verification = row.get("verification") or {}
        tar = verification.get("tar") or {}
        seconds = _finite(row.get("embed_seconds_per_image"))
        table_rows.append([row.get("spec", MISSING), _count(row.get("embedding_dim")), _count(row.get("parameters")),
                           MISSING if seconds is None else f"{1000 * seconds:.2f}"]
                          + [_estimate(tar.get(f"{f:g}")) for f in fmrs] + [_estimate(verification.get("eer"))])
    out.append(_table(headers, table_rows, "benchmark-table", range(1, len(headers))))
    estimated = document.get("estimated")
    if isinstance(estimated, dict) and estimated:
        out.append(_p("Attributes read off the images by estimators: " + ", ".join(f"{k} ({v})" for k, v in estimated.items()) + "."))
    measured = [r for r in rows if not r.get("error") and isinstance(r.get("analysis"), dict)]
    if not measured:
        out.append(_p("no backbone was analysed; nothing to compare", "note"))
        out.append("</section>")
        return "".join(out)
    specs = [str(r.get("spec", f"backbone {i + 1}")) for i, r in enumerate(measured)]
    attributes: list[dict[str, Any]] = []
    for r in measured:
        for a in r["analysis"].get("attributes") or []:
            if isinstance(a, dict) and a.get("name") not in {b.get("name") for b in attributes}:
                attributes.append(a)
    names = [a["name"] for a in attributes]
    groups = _groups(attributes)
    labels = [_attribute_label(n, groups.get(n)) for n in names]

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
    )
    for heading, ylabel, ylim, value_of, table_id, caption in measures:
        out.append(f"<h3>{_e(heading)}</h3>")
        series = {spec: [value_of(r, n) for n in names] for spec, r in zip(specs, measured)}
        has_value = any(_finite(v.get("value") if isinstance(v, dict) else v) is not None for values in series.values() for v in values)
        if not names or not has_value:
            out.append(_p(f"no backbone recorded {ylabel}", "note"))
            continue
        out.append(page.figure(lambda path, series=series, ylabel=ylabel, ylim=ylim: plot_estimates(labels, series, path, ylabel=ylabel, ylim=ylim),
                               f"{ylabel} per attribute, one bar per backbone", caption))
        numbers = [[n] + [_estimate(series[s][i]) for s in specs] for i, n in enumerate(names)]
        out.append(_details("numbers", _table(["attribute"] + specs, numbers, table_id, range(1, len(specs) + 1))))
    for spec, r in zip(specs, measured):
        notes = list(r["analysis"].get("warnings") or []) + list((r.get("verification") or {}).get("notes") or [])
        if notes:
            out.append(_details(f"warnings of {spec}", _warnings(notes)))
    out.append("</section>")
    return "".join(out)


def _provenance_section(page: _Page, command: str | None) -> str:
    import matplotlib
    import torch

    from frx_plugin import __version__

    if command:
        command_line = f"<p>Command: <code>{_e(command)}</code></p>"
    elif page.recorded_command:
        command_line = f"<p>Command (recorded in {BENCHMARK_FILE}): <code>{_e(page.recorded_command)}</code></p>"
    else:
        command_line = "<p>Command: unknown</p>"
    now = {"frx": __version__, "python": platform.python_version(), "torch": torch.__version__, "matplotlib": matplotlib.__version__}
    out = ['<section id="provenance"><h2>Provenance</h2>', command_line, "<h3>Versions</h3>"]
    sources = [("this report", now)] + [(f"recorded in {name}", versions) for name, versions in page.recorded_versions.items()]
    packages: list[str] = []
    for _, versions in sources:
        packages += [k for k in versions if k not in packages]
    out.append(_table(["package"] + [s for s, _ in sources], [[p] + [str(v.get(p, MISSING)) for _, v in sources] for p in packages],
                      "provenance-versions"))
    if page.machine:
        out.append(_p(f"Machine (recorded in {BENCHMARK_FILE}): {page.machine}."))
    generated = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    out.append(_p(f"Generated {generated} from the folder {page.folder.resolve()}."))
    out.append("<h3>Files used</h3>")
    rows = [[name, _count((page.folder / name).stat().st_size)] for name in page.used]
    out.append(_table(["file", "bytes"], rows, "provenance-files", [1]))
    out.append("</section>")
    return "".join(out)


# ------------------------------------------------------------------------------------ the page


def write_report(folder: str | Path, out: str | Path | None = None, command: str | None = None) -> Path:
    """Write one self-contained HTML page for the frx output files in ``folder``; return its path.

    ``out``: the page (default ``folder/report.html``), written atomically. ``command``: the command
    line that made the report (default: the one ``benchmark.json`` recorded, else "unknown").
    A folder with none of :data:`KNOWN_FILES` is a ``FileNotFoundError`` naming it and them; a damaged
    or foreign JSON file is a ``ValueError`` naming the file.
    """
    from frx_plugin.history import atomic_write_text

    folder = Path(folder)
    present = [name for name in KNOWN_FILES if (folder / name).is_file()]
    if not present:
        where = "is not a folder" if not folder.is_dir() else "holds no frx output"
        raise FileNotFoundError(f"{folder} {where} to report on: looked for {', '.join(KNOWN_FILES)}")
    target = Path(out) if out is not None else folder / REPORT_FILE
    documents = {name: _load_json(folder / name) for name in present if name != HISTORY_FILE}  # every file checked before drawing
    renderers = {ANALYSIS_FILE: _analysis_section, EXPLANATIONS_FILE: _explanations_section, BENCHMARK_FILE: _benchmark_section}
    titles = {HISTORY_FILE: ("history", "Training history"), ANALYSIS_FILE: ("analysis", "Analysis"),
              EXPLANATIONS_FILE: ("explanations", "Explanations"), BENCHMARK_FILE: ("benchmark", "Benchmark")}
    with tempfile.TemporaryDirectory(prefix="frx-report-") as scratch:
        page = _Page(folder, Path(scratch))
        sections = []
        for name in present:
            try:
                if name == HISTORY_FILE:
                    sections.append(_history_section(page))
                else:
                    page.use(name)
                    sections.append(renderers[name](page, documents[name]))
            except (KeyError, TypeError, AttributeError, IndexError) as exc:  # valid JSON, but not laid out as frx writes it
                raise ValueError(f"{folder / name}: unexpected layout ({type(exc).__name__}: {exc})") from exc
        sections.append(_provenance_section(page, command))
    nav = " ".join(f'<a href="#{titles[n][0]}">{_e(titles[n][1])}</a>' for n in present) + ' <a href="#provenance">Provenance</a>'
    title = f"frx report: {folder.resolve().name or folder}"
    text = "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>{STYLE}</style></head>",
        "<body>",
        f"<header><h1>{_e(title)}</h1><nav>{nav}</nav></header>",
        *sections,
        f"<script>{SCRIPT}</script>",
        "</body></html>",
        "",
    ])
    atomic_write_text(target, text)
    return target
