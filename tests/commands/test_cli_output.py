"""What frx's commands print besides their results: frx's warnings one line each, third-party notices left out
(shown with --verbose), and progress as plain lines in a log (none with --quiet)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from frx_plugin.commands import messages
from tests.commands.test_cli_reliability import TINY_DEMO, embedding_file
from tests.ddp_launch import HANG_LIMIT_S


def _demo(out, *extra) -> subprocess.CompletedProcess:
    pytest.importorskip("lightning")
    return subprocess.run([sys.executable, "-m", "frx_plugin", "demo", "--out", str(out), "--epochs", "1", *TINY_DEMO, *extra],
                          capture_output=True, text=True, timeout=HANG_LIMIT_S)


def test_demo_shows_frx_messages_one_line_each_and_no_third_party_notices(tmp_path):
    proc = _demo(tmp_path / "demo")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and all(line.startswith(("frx demo: warning: ", "[frx]")) for line in lines), proc.stderr[-3000:]
    for noise in ("litlogger", "GPU available", "TPU available", "pass transform=", "Warning:", "warn(", "registration.factory"):
        assert noise not in proc.stderr, noise


def test_verbose_shows_the_libraries_messages_too(tmp_path):
    proc = _demo(tmp_path / "demo", "--verbose")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GPU available" in proc.stderr


def test_a_warning_of_frx_is_one_line_without_its_source_line(frx, tmp_path, fresh_plugins):
    import torch

    from frx_plugin.hookspecs import hookimpl
    from frx_plugin.plugins import get_plugin_manager

    class Plugin:
        @hookimpl
        def frx_register_backbones(self, register):
            register("flat-net", lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 8)), "a test backbone")

    get_plugin_manager().register(Plugin(), name="test.flat")
    result = frx("analyze", "--backbone", "flat-net", "--probe", "synthetic,n_identities=12,images_per_identity=3,size=32",
                 "--bootstrap", "0", "--no-verification", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if "warning" in line]
    assert warned and all(line.startswith("frx analyze: warning: ") for line in warned), result.stderr
    assert "self.warn_once(" not in result.stderr and ".py:" not in result.stderr


def test_progress_is_plain_lines_in_a_log_and_none_with_quiet(frx, tmp_path, monkeypatch):
    monkeypatch.setenv("FRX_PROGRESS_EVERY_S", "0")
    big = embedding_file(tmp_path / "set.safetensors", n_identities=50)
    logged = frx("analyze", "--embeddings", big, "--no-verification", "--bootstrap", "0", "--out", tmp_path / "a")
    assert logged.returncode == 0, logged.stderr
    lines = logged.stderr.splitlines()
    assert "frx: statistics 200/200 (100%, 0s)" in lines and any(line.startswith("frx: held-out scores ") for line in lines)
    assert "\r" not in logged.stderr  # no bar drawn in a log
    quiet = frx("analyze", "--embeddings", big, "--no-verification", "--bootstrap", "0", "--out", tmp_path / "b", "--quiet")
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_demo_training_lines_follow_frx_progress_every_s(monkeypatch, capsys):
    """FRX_PROGRESS_EVERY_S sets the demo's plain training lines too (they were fixed at 30 s: a demo epoch shorter
    than that showed no line between the passes, whatever the variable said)."""
    pytest.importorskip("lightning")
    from types import SimpleNamespace

    from frx_lightning.demo import _PlainTrainingProgress

    monkeypatch.setenv("FRX_PROGRESS_EVERY_S", "0")
    lines = _PlainTrainingProgress()
    trainer = SimpleNamespace(num_training_batches=3, current_epoch=0, is_global_zero=True)
    lines.on_train_epoch_start(trainer, None)
    for batch in range(3):
        lines.on_train_batch_end(trainer, None, None, None, batch)
    printed = capsys.readouterr().err.splitlines()
    assert [line.split(" (")[0] for line in printed] == [f"[frx] epoch 1: batch {b}/3" for b in (1, 2, 3)], printed
    monkeypatch.setenv("FRX_PROGRESS_EVERY_S", "3600")
    assert _PlainTrainingProgress().every_s == 3600.0
    monkeypatch.delenv("FRX_PROGRESS_EVERY_S")
    assert _PlainTrainingProgress().every_s == 30.0  # the demo's own default when the variable is not set


def test_progress_on_a_terminal_is_a_bar_on_one_line_and_none_with_quiet(monkeypatch):
    import io

    from frx_plugin.commands.common import progress_bar

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    messages.set_output(quiet=False)
    show = progress_bar()
    assert show is not None
    for done in (1, 2, 4):
        show(done, 4, "embedding")
    drawn = terminal.getvalue()
    assert drawn.count("\r") == 3 and drawn.count("\n") == 1 and drawn.endswith("] 4/4\n"), repr(drawn)
    assert f"[{'#' * 30}]" in drawn and f"[{'#' * 7}{'.' * 23}] 1/4" in drawn
    assert not messages.BAR["open"]  # the finished bar ended its line
    messages.set_output(quiet=True)
    try:
        assert progress_bar() is None
    finally:
        messages.set_output()


def test_plain_progress_waits_before_its_first_line():
    seen = []
    show = messages.plain_progress(every_s=3600)
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stderr(buffer):
        for done in range(1, 101):
            show(done, 100, "embedding")
    seen = buffer.getvalue()
    assert seen == ""  # a short stage prints nothing


def test_the_report_of_an_analyze_folder_names_the_command_that_made_it(frx, tmp_path):
    file = embedding_file(tmp_path / "set.safetensors")
    out = tmp_path / "out"
    assert frx("analyze", "--embeddings", file, "--out", out, "--bootstrap", "0").returncode == 0
    assert frx("report", out).returncode == 0
    page = (out / "report.html").read_text()
    assert f"Command (recorded in analysis.json): <code>frx analyze --embeddings {file} --out {out} --bootstrap 0</code>" in page
    assert "Command: unknown" not in page


def test_the_report_of_an_explain_folder_names_the_command_that_made_it(frx, tmp_path):
    file = embedding_file(tmp_path / "set.safetensors")
    out = tmp_path / "out"
    made = frx("explain", "--embeddings", file, "--out", out, "--fmr", "0.01", "--max-pairs", "3")
    assert made.returncode == 0, made.stderr
    assert json.loads((out / "explanations.json").read_text())["command"] == f"frx explain --embeddings {file} --out {out} --fmr 0.01 --max-pairs 3"
    assert frx("report", out).returncode == 0
    page = (out / "report.html").read_text()
    assert f"Command (recorded in explanations.json): <code>frx explain --embeddings {file} --out {out} --fmr 0.01 --max-pairs 3</code>" in page


def _differentials_record() -> dict:
    """sex: one group too small for an FNMR (so no FNMR ratio, FDR or GARBE); glasses: every FMR is 0."""
    def rate(value):
        return {"value": value, "low": value, "high": value}

    sex = {"name": "sex", "groups": [{"label": "f", "fnmr": rate(0.1), "fmr": rate(0.001)},
                                     {"label": "m", "fnmr": None, "fnmr_too_small": "12 genuine pairs < 50", "fmr": rate(0.002)}],
           "fnmr_ratio": {"value": None}, "fmr_ratio": rate(2.0), "fdr": {"value": None}, "garbe": {"value": None}}
    glasses = {"name": "glasses", "groups": [{"label": "no", "fnmr": rate(0.1), "fmr": rate(0.0)},
                                             {"label": "yes", "fnmr": rate(0.2), "fmr": rate(0.0)}],
               "fnmr_ratio": rate(2.0), "fmr_ratio": {"value": None}, "fdr": rate(0.9), "garbe": {"value": None}}
    return {"tau": 0.5, "fmr": 0.001, "attributes": [sex, glasses]}


def test_every_dash_in_the_differentials_table_says_why():
    from frx_plugin.commands.analyze import format_differentials_table
    from frx_plugin.report import Report

    report = Report(leakage=[], n_samples=100, n_identities=25, n_folds=5)
    report.differentials = _differentials_record()
    table = format_differentials_table(report)
    rows = {line.split()[0]: line for line in table.splitlines()[3:5]}
    assert rows["sex"].split()[1:3] == ["–", "(a)"] and "– (a)" in rows["sex"]
    assert "(a) fewer than two groups with enough pairs for an FNMR (1 of 2)" in table
    assert "– (b)" in rows["glasses"] and "(b) every group's FMR is 0 at τ (no ratio or Gini index of zero rates)" in table
    assert all("–" not in line or "(" in line for line in table.splitlines()[3:5])


def test_the_report_says_why_a_summary_is_missing_and_why_groups_and_curves_are_not_shown(tmp_path):
    from frx_plugin.commands.report.blocks import differentials_block
    from frx_plugin.commands.report.markup import Page

    record = _differentials_record()
    for item in record["attributes"]:
        item["garbe"] = {"value": None}
    html = differentials_block(Page(tmp_path, tmp_path), record, "t")
    assert "fewer than two groups with enough pairs for an FNMR (1 of 2)" in html
    assert "No table of groups and no DET curves" in html
    record["attributes"][1]["garbe"] = {"value": 0.3, "low": 0.2, "high": 0.4}
    html = differentials_block(Page(tmp_path, tmp_path), record, "t")
    assert "Groups of glasses" in html and "No DET curves: this run did not record" in html


def test_a_long_step_without_a_bar_says_it_is_still_working(frx, monkeypatch, fresh_plugins):
    import time

    from frx_plugin.hookspecs import hookimpl
    from frx_plugin.plugins import get_plugin_manager

    class Nap:
        @hookimpl
        def frx_register_commands(self, register):
            register("nap", lambda parser: (lambda args: time.sleep(1.6) or 0), "sleeps, with no progress of its own")

    get_plugin_manager().register(Nap(), name="test.nap")
    monkeypatch.setenv("FRX_HEARTBEAT_S", "0.5")
    result = frx("nap")
    assert result.returncode == 0
    lines = result.stderr.splitlines()
    assert len(lines) >= 2 and all(line.startswith("frx nap: still working, ") and line.endswith("s so far") for line in lines), lines
    assert frx("nap", "--quiet").stderr == ""


def test_every_dash_of_the_differentials_in_benchmark_md_says_why(frx, tmp_path):
    import json

    from frx_plugin.commands.benchmark_tables import benchmark_markdown

    out = tmp_path / "bench"
    file = embedding_file(tmp_path / "set.safetensors")
    assert frx("benchmark", "--embeddings", file, "--out", out, "--bootstrap", "5", "--no-report").returncode == 0
    document = json.loads((out / "benchmark.json").read_text())
    sex, glasses = _differentials_record()["attributes"]
    sex["name"] = "age"
    document["backbones"][0]["analysis"]["differentials"]["attributes"] = [sex, glasses]
    text = benchmark_markdown(document)
    garbe = text[text.index("GARBE per attribute"):text.index("FNMR max/min over the groups")]
    notes = {line[1]: line[4:] for line in garbe.splitlines() if line[:1] == "(" and line[2:3] == ")"}
    assert sorted(notes.values()) == ["every group's FMR is 0 at τ (no ratio or Gini index of zero rates).",
                                      "fewer than two groups with enough pairs for an FNMR (1 of 2)."]
    why = {text: mark for mark, text in notes.items()}
    assert f"| age | — ({why['fewer than two groups with enough pairs for an FNMR (1 of 2).']}) |" in garbe
    assert f"| glasses | — ({why['every group' + chr(39) + 's FMR is 0 at τ (no ratio or Gini index of zero rates).']}) |" in garbe


def test_every_dash_of_the_other_tables_in_benchmark_md_says_why(frx, tmp_path):
    import json

    from frx_plugin.commands.benchmark_tables import benchmark_markdown

    out = tmp_path / "bench"
    file = embedding_file(tmp_path / "set.safetensors")
    assert frx("benchmark", "--embeddings", file, "--out", out, "--bootstrap", "5", "--no-report").returncode == 0
    document = json.loads((out / "benchmark.json").read_text())
    record = document["backbones"][0]["analysis"]
    assert record["significance"]  # measured: the cells have values
    text = benchmark_markdown(document)
    section = text[text.index("Identity significance S_k per attribute"):text.index("Share of errors")]
    assert "| — " not in section and "—" not in section
    record["significance"], record["error_attribution"], record["counterfactuals"] = {}, {}, None
    record["warnings"].append("counterfactuals skipped: CounterfactualError: the generator failed")
    text = benchmark_markdown(document)
    for title, end in (("Identity significance S_k per attribute", "Share of errors"),
                       ("Share of errors each attribute explains", "Demographic differentials")):
        section = text[text.index(title):text.index(end)]
        rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith(("| attribute", "|---"))]
        assert rows and all(line.endswith("| — (a) |") for line in rows), rows
        assert "(a) counterfactuals skipped: CounterfactualError: the generator failed." in section
