"""The HTML of ``report.html``: escaping and number formatting, tables, embedded PNG figures, reading the JSON files, the page state."""

from __future__ import annotations

import base64
import html
import json
import math
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPORT_FILE = "report.html"
HISTORY_FILE = "history.json"
ANALYSIS_FILE = "analysis.json"
EXPLANATIONS_FILE = "explanations.json"
BENCHMARK_FILE = "benchmark.json"
DECODING_FILE = "decoding.json"
#: The files whose presence makes a folder reportable, in the order their sections appear.
KNOWN_FILES = (HISTORY_FILE, ANALYSIS_FILE, EXPLANATIONS_FILE, BENCHMARK_FILE, DECODING_FILE)
FORMATS = {ANALYSIS_FILE: "frx.analysis/1", EXPLANATIONS_FILE: "frx.explanations/1", BENCHMARK_FILE: "frx.benchmark/1",
           DECODING_FILE: "frx.decoding/1"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MISSING = "—"


# ------------------------------------------------------------------------------------ formatting


def escape(text: Any) -> str:
    return html.escape(str(text), quote=True)


def finite(value: Any) -> float | None:
    """``value`` as a finite float, or None (JSON null, NaN, text, booleans)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def number(value: Any, digits: int = 3) -> str:
    value = finite(value)
    return MISSING if value is None else f"{value:.{digits}f}"


def estimate(entry: Any, digits: int = 3) -> str:
    """``value [low, high]`` of an ``{"value", "low", "high"}`` entry (or a bare number); "—" when missing."""
    if not isinstance(entry, dict):
        return number(entry, digits)
    value = "∞" if entry.get("infinite") else number(entry.get("value"), digits)  # a max/min ratio whose least rate is 0
    if value == MISSING:
        return MISSING
    low, high = finite(entry.get("low")), finite(entry.get("high"))
    if low is None or high is None:
        return value
    return f"{value} [{low:.{digits}f}, {high:.{digits}f}]"


def count(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return MISSING
    return f"{int(value):,}"


def fmr_text(value: Any) -> str:
    value = finite(value)
    return MISSING if value is None else f"{value:g}"


class Cell:
    """A table cell: text (escaped when written), its column span, and a CSS class."""

    def __init__(self, text: Any, colspan: int = 1, cls: str = "") -> None:
        self.text, self.colspan, self.cls = text, colspan, cls


def html_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], table_id: str = "", numeric: Sequence[int] = ()) -> str:
    """An HTML table; cells are text or :class:`Cell`; columns in ``numeric`` are right-aligned."""
    out = [f'<table id="{escape(table_id)}">' if table_id else "<table>", "<thead><tr>"]
    out += [f"<th>{escape(h)}</th>" for h in headers]
    out.append("</tr></thead><tbody>")
    for row in rows:
        out.append("<tr>")
        column = 0
        for cell in row:
            cell = cell if isinstance(cell, Cell) else Cell(cell)
            cls = cell.cls or ("number" if column in numeric else "")
            attributes = (f' colspan="{cell.colspan}"' if cell.colspan > 1 else "") + (f' class="{cls}"' if cls else "")
            out.append(f"<td{attributes}>{escape(cell.text)}</td>")
            column += cell.colspan
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def paragraph(text: str, cls: str = "") -> str:
    return f'<p class="{cls}">{escape(text)}</p>' if cls else f"<p>{escape(text)}</p>"


def warning_list(messages: Any) -> str:
    if not isinstance(messages, list) or not messages:
        return ""
    return '<ul class="warnings">' + "".join(f"<li>{escape(m)}</li>" for m in messages) + "</ul>"


def details(summary: str, body: str) -> str:
    return f"<details><summary>{escape(summary)}</summary>{body}</details>"


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's header, or None when ``data`` is not a PNG."""
    if len(data) < 24 or not data.startswith(PNG_MAGIC) or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def png_figure(data: bytes, alt: str, caption: str = "") -> str:
    width, height = png_size(data) or (0, 0)
    size = f' width="{width}" height="{height}"' if width and height else ""
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    figure = f'<figure><img src="{uri}" alt="{escape(alt)}"{size}>'
    return figure + (f"<figcaption>{escape(caption)}</figcaption>" if caption else "") + "</figure>"


# ------------------------------------------------------------------------------------ reading


def load_json(path: Path) -> dict[str, Any]:
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


class Page:
    """What the sections share: the folder, a scratch folder for figures, the files read, recorded versions."""

    def __init__(self, folder: Path, scratch: Path) -> None:
        self.folder = folder
        self.scratch = scratch
        self.used: list[str] = []
        self.recorded_versions: dict[str, dict[str, Any]] = {}
        self.recorded_command: str | None = None
        self.recorded_in: str | None = None  # the file that recorded the command
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
            return paragraph(f"no figure: {exc}", "note")
        return png_figure(path.read_bytes(), alt, caption)

    def existing(self, name: str, alt: str, caption: str = "") -> str:
        """Embed the folder's PNG ``name`` ("" when absent; a note when it is not a PNG)."""
        path = self.folder / name
        if not path.is_file():
            return ""
        data = path.read_bytes()
        if png_size(data) is None:
            return paragraph(f"{name} is not a PNG image; left out", "note")
        self.use(name)
        return png_figure(data, alt, caption)
