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
5. **Decoding** (``decoding.json``, ``frx.decoding/1``: ``frx decode``): the decoder, how it was trained,
   the identity similarity of the decodings, and ``faces.png``, ``directions.png``, ``random.png``;
6. **Provenance**: the command, the versions (now and as the files recorded them), the time, the files.

The page opens with no network: every figure is a PNG drawn by matplotlib (:mod:`frx_plugin.figures`)
and embedded as a ``data:`` URI, the style sheet is inline, and nothing links outside the page. A
small inline script sets ``document.body.dataset.figures = "<loaded>/<total>"`` once the page has
loaded (for a headless-browser check, ``benchmarks/report_screenshot.py``); the page reads the same
without it. Missing numbers (JSON's ``null``) read "—".
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from frx_plugin.commands.report.markup import (
    ANALYSIS_FILE,
    BENCHMARK_FILE,
    DECODING_FILE,
    EXPLANATIONS_FILE,
    HISTORY_FILE,
    KNOWN_FILES,
    REPORT_FILE,
    Page,
    escape,
    load_json,
)
from frx_plugin.commands.report.sections import (
    analysis_section,
    benchmark_section,
    decoding_section,
    explanations_section,
    history_section,
    provenance_section,
)

__all__ = ["write_report", "REPORT_FILE", "KNOWN_FILES", "SCRIPT"]

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
    documents = {name: load_json(folder / name) for name in present if name != HISTORY_FILE}  # every file checked before drawing
    renderers = {ANALYSIS_FILE: analysis_section, EXPLANATIONS_FILE: explanations_section, BENCHMARK_FILE: benchmark_section,
                 DECODING_FILE: decoding_section}
    titles = {HISTORY_FILE: ("history", "Training history"), ANALYSIS_FILE: ("analysis", "Analysis"),
              EXPLANATIONS_FILE: ("explanations", "Explanations"), BENCHMARK_FILE: ("benchmark", "Benchmark"),
              DECODING_FILE: ("decoding", "Decoding")}
    with tempfile.TemporaryDirectory(prefix="frx-report-") as scratch:
        page = Page(folder, Path(scratch))
        sections = []
        for name in present:
            try:
                if name == HISTORY_FILE:
                    sections.append(history_section(page))
                else:
                    page.use(name)
                    sections.append(renderers[name](page, documents[name]))
            except (KeyError, TypeError, AttributeError, IndexError) as exc:  # valid JSON, but not laid out as frx writes it
                raise ValueError(f"{folder / name}: unexpected layout ({type(exc).__name__}: {exc})") from exc
        sections.append(provenance_section(page, command))
    nav = " ".join(f'<a href="#{titles[n][0]}">{escape(titles[n][1])}</a>' for n in present) + ' <a href="#provenance">Provenance</a>'
    title = f"frx report: {folder.resolve().name or folder}"
    text = "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title>",
        f"<style>{STYLE}</style></head>",
        "<body>",
        f"<header><h1>{escape(title)}</h1><nav>{nav}</nav></header>",
        *sections,
        f"<script>{SCRIPT}</script>",
        "</body></html>",
        "",
    ])
    atomic_write_text(target, text)
    return target
