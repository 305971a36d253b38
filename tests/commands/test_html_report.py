"""`frx report`: one self-contained report.html, read back with html.parser and checked against the files it reads."""

from __future__ import annotations

import base64
import io
import json
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from benchmarks.report_screenshot import (
    benchmark_document,
    browser_check,
    write_analysis_file,
    write_explanations_file,
    write_history_folder,
)
from frx_plugin.commands.report import KNOWN_FILES, write_report

SECTIONS = {"history.json": "Training history", "analysis.json": "Analysis", "explanations.json": "Explanations", "benchmark.json": "Benchmark"}


class Page(HTMLParser):
    """What the tests read off a page: images, every URL-bearing attribute, headings, tables by id, the text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.images: list[dict[str, str]] = []
        self.urls: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.headings: dict[str, list[str]] = {"h1": [], "h2": [], "h3": []}
        self.tables: dict[str, list[list[str]]] = {}
        self.scripts: list[str] = []
        self.text: list[str] = []
        self._heading: str | None = None
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._script = False
        self._style = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name in ("src", "href", "srcset", "poster", "data", "action", "background"):
            if name in attrs:
                self.urls.append((tag, name, attrs[name] or ""))
        if tag == "img":
            self.images.append(attrs)
        elif tag in self.headings:
            self._heading = tag
            self.headings[tag].append("")
        elif tag == "table":
            self._table = attrs.get("id") or f"table{len(self.tables)}"
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []
        elif tag == "script":
            self._script = True
            self.scripts.append("")
        elif tag == "style":
            self._style = True

    def handle_endtag(self, tag):
        if tag == self._heading:
            self._heading = None
        elif tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag == "script":
            self._script = False
        elif tag == "style":
            self._style = False

    def handle_data(self, data):
        if self._script:
            self.scripts[-1] += data
            return
        if self._style:
            return
        self.text.append(data)
        if self._heading is not None:
            self.headings[self._heading][-1] += data
        if self._cell is not None:
            self._cell.append(data)

    @property
    def body(self) -> str:
        """The visible text, whitespace collapsed."""
        return " ".join(" ".join(self.text).split())

    def table(self, table_id: str) -> list[list[str]]:
        assert table_id in self.tables, f"no table {table_id!r}; the page has {sorted(self.tables)}"
        return self.tables[table_id]

    def rows(self, table_id: str) -> dict[str, list[str]]:
        """Body rows of a table keyed by their first cell."""
        return {row[0]: row for row in self.table(table_id)[1:]}


def read_page(path: Path) -> tuple[str, Page]:
    text = path.read_text(encoding="utf-8")
    return text, Page(text)


def assert_self_contained(text: str, page: Page) -> None:
    """Every image is an embedded PNG that decodes; nothing points outside the page."""
    from PIL import Image

    assert "http://" not in text and "https://" not in text
    assert not [v for _, _, v in page.urls if "//" in v and not v.startswith("data:")]
    assert not any(tag in ("link", "iframe", "object", "embed") for tag, _, _ in page.urls)
    for tag, attribute, value in page.urls:
        if attribute == "src":
            assert tag == "img" and value.startswith("data:image/png;base64,"), (tag, value[:60])
        elif attribute == "href":
            assert value.startswith("#"), value  # in-page anchors only
        else:
            pytest.fail(f"unexpected URL attribute {attribute} on <{tag}>")
    assert page.images
    for image in page.images:
        data = base64.b64decode(image["src"].split(",", 1)[1], validate=True)
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(io.BytesIO(data)) as decoded:
            decoded.verify()
        with Image.open(io.BytesIO(data)) as decoded:
            width, height = decoded.size
            assert width > 0 and height > 0
            assert (image.get("width"), image.get("height")) == (str(width), str(height))
        assert image.get("alt")
    # the headless-browser hook: one inline script, no source of its own
    assert len(page.scripts) == 1 and "document.body.dataset.figures" in page.scripts[0] and "naturalWidth" in page.scripts[0]


def fmt(value) -> str:
    return "—" if value is None else f"{value:.3f}"


def interval(entry: dict) -> str:
    if entry.get("value") is None:
        return "—"
    if entry.get("low") is None or entry.get("high") is None:
        return fmt(entry["value"])
    return f"{entry['value']:.3f} [{entry['low']:.3f}, {entry['high']:.3f}]"


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """One folder of each kind (real files, made in a few seconds) and one with all of them."""
    root = tmp_path_factory.mktemp("frx-outputs")
    folders = {name: root / name for name in ("history", "analysis", "explanations", "benchmark", "all")}
    for folder in folders.values():
        folder.mkdir()
    write_history_folder(folders["history"])
    write_analysis_file(folders["analysis"])
    write_explanations_file(folders["explanations"])
    (folders["benchmark"] / "benchmark.json").write_text(json.dumps(benchmark_document(), indent=1, allow_nan=False), encoding="utf-8")
    for kind in ("history", "analysis", "explanations", "benchmark"):
        for path in folders[kind].iterdir():
            shutil.copy(path, folders["all"] / path.name)
    return folders


def test_every_kind_in_one_page_self_contained_and_in_order(outputs, tmp_path):
    target = tmp_path / "elsewhere" / "page.html"
    written = write_report(outputs["all"], out=target, command="frx report all --out page.html")
    assert written == target and target.is_file() and not (outputs["all"] / "report.html").exists()
    text, page = read_page(target)
    assert_self_contained(text, page)
    assert page.headings["h2"] == ["Training history", "Analysis", "Explanations", "Benchmark", "Provenance"]
    # history: leakage, significance, attribution, recovery re-plotted + decoded.png; analysis: leakage bars and the
    # differentials' DET curves; explanations: attribution + counterfactuals.png; benchmark: four comparisons (leakage,
    # significance, errors and GARBE: its analysis records hold the differentials, as every pass now measures them)
    assert len(page.images) == 5 + 2 + 2 + 4
    assert sum("GARBE" in (i.get("alt") or "") for i in page.images) == 1
    # embedded files are embedded byte for byte
    sources = {base64.b64decode(i["src"].split(",", 1)[1]) for i in page.images}
    assert (outputs["all"] / "decoded.png").read_bytes() in sources
    assert (outputs["all"] / "counterfactuals.png").read_bytes() in sources
    # provenance: the command given, the versions, the files read
    import torch

    import frx_plugin

    body = page.body
    assert "frx report all --out page.html" in body
    versions = page.rows("provenance-versions")
    assert versions["frx"][1] == frx_plugin.__version__ and versions["torch"][1] == torch.__version__
    header = page.table("provenance-versions")[0]
    assert versions["torch"][header.index("recorded in benchmark.json")] == "2.4.0+cpu"  # as benchmark.json recorded it
    assert versions["torch"][header.index("recorded in analysis.json")] == torch.__version__  # frx analyze records its versions too
    assert versions["python"][1] == f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    used = [row[0] for row in page.table("provenance-files")[1:]]
    assert set(used) == {"history.json", "history.safetensors", "decoded.png", "analysis.json", "explanations.json",
                         "counterfactuals.png", "benchmark.json"}
    assert "UTC" in body


def test_history_section_matches_the_history_files(outputs):
    from frx_plugin.history import read_history

    path = write_report(outputs["history"])
    assert path == outputs["history"] / "report.html"
    text, page = read_page(path)
    assert_self_contained(text, page)
    assert page.headings["h2"] == ["Training history", "Provenance"]
    assert page.headings["h3"][:6] == ["Leakage across epochs", "Last pass", "Identity significance (epoch 2, latent counterfactuals)",
                                       "Error attribution (epoch 2)", "Demographic differentials (epoch 2)",
                                       "Two-stage recovery (epoch 2)"]
    assert "Decoded faces" in page.headings["h3"]
    assert len(page.images) == 5  # leakage.png / recovery.png are re-plotted, not embedded twice
    _, records, _ = read_history(outputs["history"])
    last = records[-1]
    rows = page.rows("history-table")
    assert list(rows) == [a["name"] for a in last["attributes"]]
    for attribute in last["attributes"]:
        row = rows[attribute["name"]]
        assert row[1:4] == [attribute["group"], attribute["kind"], attribute["metric"]]
        assert row[4] == interval({"value": attribute["value"], "low": attribute["low"], "high": attribute["high"]})
        assert row[5] == interval({"value": attribute["leakage"], "low": attribute["leakage_low"], "high": attribute["leakage_high"]})
    body = page.body
    assert f"TAR {last['verification']['tar']:.3f} at FMR 0.01" in body
    significance = page.rows("history-significance-table")
    for name, estimate in last["significance"].items():
        assert significance[name][1] == interval(estimate)
    attribution = page.rows("history-attribution-table")
    assert page.table("history-attribution-table")[0] == ["attribute", "all errors", "false non-match", "false match"]
    for name, share in last["error_attribution"]["all"].items():
        assert attribution[name][1] == fmt(share)
    differentials = page.rows("history-differentials-table")  # every pass measures them: the last one's are shown
    assert list(differentials) == [a["name"] for a in last["differentials"]["attributes"]]
    for item in last["differentials"]["attributes"]:
        for column, key in ((1, "fnmr_ratio"), (2, "fmr_ratio"), (3, "fdr"), (4, "garbe")):
            expected = "∞" if (item[key] or {}).get("infinite") else interval(item[key] or {})
            assert differentials[item["name"]][column].startswith(expected), (item["name"], key)
    recovery = page.rows("recovery-table")
    smile = last["recovery"]["attributes"]["smile"]
    assert recovery["smile"][2] == interval(smile["two_stage"]) and recovery["smile"][3] == fmt(smile["direct"]["value"])
    assert recovery["smile"][4] == "—"  # null in the file


def test_analysis_section_matches_analysis_json(outputs):
    document = json.loads((outputs["analysis"] / "analysis.json").read_text())
    text, page = read_page(write_report(outputs["analysis"]))
    assert_self_contained(text, page)
    assert page.headings["h2"] == ["Analysis", "Provenance"]
    differentials = document["differentials"]
    assert differentials["curves"]["attribute"]  # the fixture's differentials hold the DET data of their most unequal attribute
    assert len(page.images) == 2  # leakage bars and the DET curves
    assert "Demographic differentials" in page.headings["h3"]
    summary = page.rows("analysis-differentials-table")
    for item in differentials["attributes"]:
        assert summary[item["name"]][1:5] == [interval(item[k] or {"value": None}) for k in ("fnmr_ratio", "fmr_ratio", "fdr", "garbe")]
    worst = next(a for a in differentials["attributes"] if a["name"] == differentials["curves"]["attribute"])
    groups = page.rows("analysis-differentials-table-groups")
    for group in worst["groups"]:
        shown = groups[group["label"]]
        assert shown[3] == (interval(group["fnmr"]) if group["fnmr"] else f"too small: {group['fnmr_too_small']}")
        assert shown[5] == (interval(group["fmr"]) if group["fmr"] else f"too small: {group['fmr_too_small']}")
    rows = page.rows("analysis-table")
    for attribute in document["attributes"]:
        leakage = {"value": attribute["leakage"], "low": attribute["leakage_low"], "high": attribute["leakage_high"]}
        assert rows[attribute["name"]][5] == interval(leakage)
    verification = document["verification"]
    body = page.body
    assert f"TAR {verification['tar']:.3f} at FMR {verification['fmr']:g}" in body
    assert f"{verification['impostor_pairs']:,} impostor pairs" in body
    assert document["source"] in body
    assert "Command: not recorded (the files were written by a training callback or by Python code" in body  # none given or recorded


def test_explanations_section_matches_explanations_json(outputs):
    document = json.loads((outputs["explanations"] / "explanations.json").read_text())
    text, page = read_page(write_report(outputs["explanations"]))
    assert_self_contained(text, page)
    assert page.headings["h2"] == ["Explanations", "Provenance"]
    assert "Counterfactual faces" in page.headings["h3"] and len(page.images) == 2
    counts = page.table("explanations-counts")[1]
    assert counts == [f"{document['counts'][k]:,}" for k in ("false_non_match", "false_match", "explained")]
    assert f"τ = {document['tau']:.4f}" in page.body
    pairs = page.table("explanations-pairs")[1:]
    assert len(pairs) == min(10, len(document["pairs"])) > 0
    for row, entry in zip(pairs, document["pairs"]):
        assert row[0] == ", ".join(str(i) for i in entry["pair"])
        assert row[2] == entry["kind"].replace("_", " ").replace("non match", "non-match")
        assert row[3] == f"{entry['score']:.4f}" and row[4] == f"{entry['tau']:.4f}"
        assert row[5] == (", ".join(entry["deciding"]) or "none alone")
    attribution = page.rows("explanations-attribution-table")
    for name, share in document["attribution"]["all"].items():
        assert attribution[name][1] == fmt(share)


def test_benchmark_section_matches_benchmark_json_and_shows_nulls_and_failures(outputs):
    document = json.loads((outputs["benchmark"] / "benchmark.json").read_text())
    text, page = read_page(write_report(outputs["benchmark"]))
    assert_self_contained(text, page)
    assert page.headings["h2"] == ["Benchmark", "Provenance"]
    assert page.headings["h3"][:4] == ["Leakage per attribute", "Identity significance per attribute", "Error attribution per attribute",
                                       "Demographic differentials per attribute"]
    assert len(page.images) == 4  # the fourth: GARBE side by side (the analysis records hold the differentials)
    table = page.table("benchmark-table")
    assert table[0] == ["backbone", "D", "parameters", "ms / image", "TAR @ FMR 0.001 (95% CI)", "TAR @ FMR 0.0001 (95% CI)", "EER (95% CI)"]
    good, large, bad = document["backbones"]
    row = page.rows("benchmark-table")[good["spec"]]
    tar = good["verification"]["tar"]["0.001"]
    assert row[4] == f"{tar['value']:.3f} [{tar['low']:.3f}, {tar['high']:.3f}]" == "0.812 [0.753, 0.870]"
    assert row[5] == "—"  # TAR at 1e-4 is null
    assert row[6] == interval(good["verification"]["eer"])
    assert row[1] == "16" and row[2] == "—" and row[3] == "1.25"  # parameters null; 1.25 ms per image
    row = page.rows("benchmark-table")[large["spec"]]
    assert row[2] == "1,234,567" and row[3] == "4.20" and row[5] == interval(large["verification"]["tar"]["0.0001"])
    failed = page.rows("benchmark-table")[bad["spec"]]
    assert failed == [bad["spec"], "failed: " + bad["error"]]
    attributes = good["analysis"]["attributes"]
    leakage = page.rows("benchmark-leakage")
    assert page.table("benchmark-leakage")[0] == ["attribute", good["spec"], large["spec"]]  # the failed one has no column
    assert leakage[attributes[0]["name"]][1] == "—"  # null leakage: a dash, and the figure still drew
    assert leakage[attributes[1]["name"]][1] == interval(
        {"value": attributes[1]["leakage"], "low": attributes[1]["leakage_low"], "high": attributes[1]["leakage_high"]})
    assert page.rows("benchmark-significance")[attributes[1]["name"]][1] == "—"
    errors = page.rows("benchmark-errors")
    for name, share in good["analysis"]["error_attribution"]["all"].items():
        assert errors[name][1] == fmt(share)
    for name, share in large["analysis"]["error_attribution"]["all"].items():
        assert errors[name][2] == fmt(share)
    for name, estimate in large["analysis"]["significance"].items():
        assert page.rows("benchmark-significance")[name][2] == interval(estimate)
    body = page.body
    assert f"Command (recorded in benchmark.json): {document['command']}" in body
    assert document["machine"] in body


def test_a_folder_without_frx_output_is_named_with_the_files_looked_for(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    for folder in (tmp_path, tmp_path / "missing"):
        with pytest.raises(FileNotFoundError) as error:
            write_report(folder)
        assert str(folder) in str(error.value)
        assert all(name in str(error.value) for name in KNOWN_FILES)
    assert not (tmp_path / "report.html").exists()


@pytest.mark.parametrize("name", ["history.json", "analysis.json", "explanations.json", "benchmark.json"])
def test_a_damaged_json_file_is_named(outputs, tmp_path, name):
    source = outputs[{"history.json": "history", "analysis.json": "analysis",
                      "explanations.json": "explanations", "benchmark.json": "benchmark"}[name]]
    folder = tmp_path / "damaged"
    shutil.copytree(source, folder)
    (folder / "report.html").unlink(missing_ok=True)  # another test's page
    original = (folder / name).read_text()
    (folder / name).write_text(original[: len(original) // 2])
    with pytest.raises(ValueError, match=rf"{name}: not valid JSON"):
        write_report(folder)
    if name != "history.json":
        (folder / name).write_text(json.dumps({"format": "something/else"}))
        with pytest.raises(ValueError, match=rf"{name}: field 'format' must be"):
            write_report(folder)
    assert not (folder / "report.html").exists()


def test_the_cli_writes_the_report(outputs, tmp_path, capsys):
    """``frx report DIR --out PAGE`` (wired in frx_plugin/commands/cli.py) writes the same page."""
    from frx_plugin.commands.cli import main

    page = tmp_path / "cli.html"
    code = main(["report", str(outputs["analysis"]), "--out", str(page)])
    assert code == 0, capsys.readouterr().err
    assert page.is_file() and "Analysis" in Page(page.read_text()).headings["h2"]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (benchmarks/report_screenshot.py is the check)")
def test_every_figure_loads_in_headless_chromium(outputs, tmp_path):
    page = write_report(outputs["all"], out=tmp_path / "report.html")
    passed, message = browser_check(page, tmp_path / "shot.png")
    assert passed, message
    images = len(read_page(page)[1].images)
    assert images == 5 + 2 + 2 + 4 and f"data-figures {images}/{images}" in message  # every <img> decoded, the DET curves too
    from PIL import Image

    with Image.open(tmp_path / "shot.png") as shot:
        assert shot.size == (1280, 4000)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_the_browser_check_fails_when_a_figure_does_not_load(tmp_path):
    """The check is not vacuous: a page whose second image cannot decode reads 1/2 and fails."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (4, 3), "red").save(buffer, format="PNG")
    good = base64.b64encode(buffer.getvalue()).decode()
    broken = base64.b64encode(b"\x89PNG\r\n\x1a\n not really a png").decode()
    from frx_plugin.commands.report import SCRIPT

    page = tmp_path / "broken.html"
    page.write_text(f'<!DOCTYPE html><html><body><img src="data:image/png;base64,{good}" alt="a">'
                    f'<img src="data:image/png;base64,{broken}" alt="b"><script>{SCRIPT}</script></body></html>')
    passed, message = browser_check(page, tmp_path / "shot.png")
    assert not passed and "data-figures 1/2" in message, message
