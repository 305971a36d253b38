"""The command line's reliability: output locations and options checked before the work, one line per expected
failure (a traceback and a hint for a bug), no result overwritten without --overwrite, signals honoured with what
was kept, a missing optional module named with its extra, and a benchmark that says what it really analysed."""

from __future__ import annotations

import errno
import json
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from frx_plugin.attributes import Attribute, AttributeSchema
from frx_plugin.embedding_set import write_embedding_set
from frx_plugin.hookspecs import hookimpl
from frx_plugin.plugins import get_plugin_manager
from tests.ddp_launch import HANG_LIMIT_S

SCHEMA = AttributeSchema([Attribute("glasses", "binary", group="nuisance"), Attribute("age", "continuous", group="identity")])
#: A demo that trains in seconds: 64 training images (one batch), 10 probe identities (two folds' worth each).
TINY_DEMO = ("--identities", "16", "--images-per-identity", "4", "--probe-identities", "10", "--probe-images-per-identity", "2",
             "--n-bootstrap", "0", "--size", "32")



def embedding_file(path: Path, n_identities: int = 100, per_identity: int = 4, dim: int = 16, seed: int = 0) -> Path:
    g = torch.Generator().manual_seed(seed)
    identity = torch.arange(n_identities).repeat_interleave(per_identity)
    labels = {"glasses": torch.randint(0, 2, (identity.numel(),), generator=g), "age": torch.rand(n_identities, generator=g)[identity]}
    z = torch.randn(n_identities, dim, generator=g)[identity] + 0.7 * torch.randn(identity.numel(), dim, generator=g)
    z[:, 0] += 2.0 * labels["glasses"]
    return write_embedding_set(path, torch.nn.functional.normalize(z, dim=1), identity, labels, SCHEMA)


def one_line(stderr: str) -> str:
    assert stderr.count("\n") == 1 and stderr.endswith("\n"), stderr
    assert "Traceback" not in stderr
    return stderr.strip()


# --------------------------------------------------------------------------- output locations, before the work


def _command(name: str, tmp_path: Path, out: Path) -> list:
    """``frx NAME`` with ``out`` as its output, and inputs that would fail (or take long) if they were opened first."""
    missing = tmp_path / "missing.safetensors"  # opened before the output check, this would be the error
    return {
        "analyze": ["analyze", "--embeddings", missing, "--out", out],
        "analyze-backbone": ["analyze", "--backbone", f"frx:{tmp_path / 'no-model'}", "--out", out],
        "explain": ["explain", "--backbone", f"frx:{tmp_path / 'no-model'}", "--out", out],
        "benchmark": ["benchmark", "--embeddings", missing, "--out", out],
        "decode": ["decode", "--decoder", f"stylegan2:{tmp_path / 'no-generator.pt'}", "--embeddings", missing, "--out", out],
        "demo": ["demo", "--out", out, "--epochs", "1000"],
        "report": ["report", tmp_path, "--out", out / "page.html"],  # a page; under a file in both cases
    }[name]


@pytest.mark.parametrize("command", ["analyze", "analyze-backbone", "explain", "benchmark", "decode", "demo", "report"])
@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_an_output_that_is_a_file_or_lies_under_one_is_refused_first_in_one_line(tmp_path, frx, command, where):
    (tmp_path / "afile").write_text("not a folder")
    out = tmp_path / "afile" if where == "a file" else tmp_path / "afile" / "sub"
    started = time.perf_counter()
    proc = frx(*_command(command, tmp_path, out))
    line = one_line(proc.stderr)
    assert proc.returncode == 2
    assert line.startswith(f"frx {command.split('-')[0]}: error: --out {tmp_path / 'afile'}") and "is a file" in line, line
    assert proc.stdout == "" and (tmp_path / "afile").read_text() == "not a folder"
    assert time.perf_counter() - started < 60  # no training, no model load: it stops at the check (generous on a busy machine)


def test_an_output_where_nothing_can_be_written_is_refused_in_one_line(tmp_path, frx):
    """/sys refuses new files even to root (EACCES): a real permission failure, found by trying to write."""
    target = Path("/sys/frx-reliability-test")
    if not Path("/sys").is_dir():
        pytest.skip("no /sys on this system")
    try:
        target.mkdir()
    except OSError:
        pass
    else:  # pragma: no cover - a system where /sys takes new folders
        target.rmdir()
        pytest.skip("/sys is writable here")
    path = embedding_file(tmp_path / "set.safetensors")
    for args in (["analyze", "--embeddings", path, "--out", target], ["demo", "--out", target / "demo"],
                 ["report", tmp_path, "--out", target / "page.html"], ["explain", "--embeddings", path, "--out", target]):
        proc = frx(*args)
        line = one_line(proc.stderr)
        assert proc.returncode == 2 and f"{target}" in line and "cannot write in /sys" in line, line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a folder of mode 0555; /sys stands in for it above")
def test_a_read_only_folder_is_refused(tmp_path, frx):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        proc = frx("analyze", "--embeddings", embedding_file(tmp_path / "set.safetensors"), "--out", folder / "out")
        assert proc.returncode == 2 and "cannot write in" in one_line(proc.stderr)
    finally:
        folder.chmod(0o755)


class _Failing:
    """A plugin command ``frx fail --how KIND`` that fails as asked: a full disk, or a bug."""

    @hookimpl
    def frx_register_commands(self, register):
        def factory(parser):
            parser.add_argument("--how", required=True)
            parser.add_argument("--path", required=True)

            def run(args):
                if args.how == "disk-full":
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), args.path)
                if args.how == "disk-full-unnamed":
                    from frx_plugin.commands.common import check_output_folder

                    check_output_folder(args.path)
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return len(args.how) + None  # a TypeError: a bug

            return run

        register("fail", factory, description="fail on purpose")


def test_an_os_error_is_one_line_naming_the_path_and_a_bug_keeps_its_traceback(tmp_path, frx, fresh_plugins):
    get_plugin_manager().register(_Failing())
    full = frx("fail", "--how", "disk-full", "--path", tmp_path / "out" / "analysis.json")
    assert full.returncode == 2
    assert one_line(full.stderr) == f"frx fail: error: {tmp_path / 'out' / 'analysis.json'}: No space left on device; nothing written"
    unnamed = frx("fail", "--how", "disk-full-unnamed", "--path", tmp_path / "out")
    assert unnamed.returncode == 2
    assert one_line(unnamed.stderr) == f"frx fail: error: No space left on device (writing into {tmp_path / 'out'}); nothing written"
    bug = frx("fail", "--how", "bug", "--path", tmp_path)
    assert bug.returncode == 1
    assert "Traceback (most recent call last)" in bug.stderr and "TypeError" in bug.stderr
    last = bug.stderr.strip().splitlines()[-1]
    assert last.startswith("frx fail: internal error (TypeError): this is a bug") and "report it" in last and "command line" in last


# --------------------------------------------------------------------------- options, before the work


def test_demo_options_are_named_once_and_not_blamed_on_the_two_stage_path(tmp_path, frx):
    for extra in ((), ("--two-stage",)):
        proc = frx("demo", "--out", tmp_path / "demo", "--n-bootstrap", "-1", *extra)
        assert proc.returncode == 2
        assert one_line(proc.stderr) == "frx demo: error: --n-bootstrap must be at least 0 (0: no intervals), got -1"
    epochs = frx("demo", "--out", tmp_path / "demo", "--epochs", "0")
    assert one_line(epochs.stderr) == "frx demo: error: --epochs must be at least 1, got 0"  # the prefix once
    for flag, value, message in (("--size", "50", "--size must be a positive multiple of 32"),
                                 ("--probe-identities", "3", "--probe-identities must be at least 5"),
                                 ("--probe-images-per-identity", "1", "--probe-images-per-identity must be at least 2")):
        proc = frx("demo", "--out", tmp_path / "demo", flag, value)
        assert proc.returncode == 2 and message in one_line(proc.stderr)
    assert not (tmp_path / "demo").exists()


def test_analyze_options_are_named_before_the_file_or_the_model_is_opened(tmp_path, frx):
    missing = tmp_path / "missing.safetensors"  # opened first, it would be the error
    for flag, value, message in (("--attributes", ",", "--attributes ',' names no attribute"), ("--bootstrap", "-1", "(option --bootstrap)"),
                                 ("--folds", "1", "(option --folds)"), ("--fmr", "1.5", "(option --fmr)")):
        proc = frx("analyze", "--embeddings", missing, "--out", tmp_path / "out", flag, value)
        assert proc.returncode == 2 and message in one_line(proc.stderr), proc.stderr
    # with a model: an attribute the probe set lacks is named before the (missing) model is opened
    proc = frx("analyze", "--backbone", f"frx:{tmp_path / 'no-model'}", "--probe", "synthetic,n_identities=10,images_per_identity=2",
               "--attributes", "yaw,wings", "--out", tmp_path / "out")
    assert proc.returncode == 2 and "wings" in one_line(proc.stderr) and "no-model" not in proc.stderr
    explain = frx("explain", "--backbone", f"frx:{tmp_path / 'no-model'}", "--fmr", "0", "--out", tmp_path / "out")
    assert explain.returncode == 2 and one_line(explain.stderr) == "frx explain: error: --fmr must be a number in (0, 1), got 0.0"
    benchmark = frx("benchmark", "--embeddings", missing, "--bootstrap", "-3", "--out", tmp_path / "bench")
    assert one_line(benchmark.stderr) == "frx benchmark: error: --bootstrap must be an integer of at least 0, got -3"
    assert not (tmp_path / "out").exists() and not (tmp_path / "bench").exists()


# --------------------------------------------------------------------------- never overwrite a result


def test_analyze_explain_and_report_refuse_their_earlier_results_unless_overwrite(tmp_path, frx):
    path = embedding_file(tmp_path / "set.safetensors")
    out = tmp_path / "out"
    assert frx("analyze", "--embeddings", path, "--out", out, "--bootstrap", "5").returncode == 0
    first = (out / "analysis.json").read_bytes()
    again = frx("analyze", "--embeddings", path, "--out", out, "--bootstrap", "7")
    assert again.returncode == 2 and again.stdout == ""
    assert one_line(again.stderr) == (f"frx analyze: error: --out {out} already holds results (analysis.json), perhaps another run's; "
                                      "pick another folder or pass --overwrite")
    assert (out / "analysis.json").read_bytes() == first
    assert frx("analyze", "--embeddings", path, "--out", out, "--bootstrap", "7", "--overwrite").returncode == 0
    assert json.loads((out / "analysis.json").read_text())["options"]["n_bootstrap"] == 7
    # explain into the same folder: its own results are not analyze's
    assert frx("explain", "--embeddings", path, "--out", out, "--fmr", "0.01", "--max-pairs", "2").returncode == 0
    explained = (out / "explanations.json").read_bytes()
    refused = frx("explain", "--embeddings", path, "--out", out, "--fmr", "0.02", "--max-pairs", "2")
    assert refused.returncode == 2 and "already holds results (explanations.json)" in one_line(refused.stderr)
    assert (out / "explanations.json").read_bytes() == explained
    assert frx("explain", "--embeddings", path, "--out", out, "--fmr", "0.02", "--max-pairs", "2", "--overwrite").returncode == 0
    assert json.loads((out / "explanations.json").read_text())["fmr"] == 0.02
    # the page
    assert frx("report", out).returncode == 0
    page = (out / "report.html").read_bytes()
    refused = frx("report", out)
    assert refused.returncode == 2 and one_line(refused.stderr).startswith(f"frx report: error: {out / 'report.html'} already exists")
    assert (out / "report.html").read_bytes() == page
    assert frx("report", out, "--out", tmp_path / "other.html").returncode == 0
    assert frx("report", out, "--overwrite").returncode == 0


def test_demo_refuses_an_earlier_run_and_overwrite_replaces_it_whole(tmp_path, frx):
    out = tmp_path / "demo"
    assert frx("demo", "--out", out, "--epochs", "1", *TINY_DEMO).returncode == 0
    before = {name: (out / name).read_bytes() for name in ("history.json", "backbone.safetensors", "report.html")}
    again = frx("demo", "--out", out, "--epochs", "2", *TINY_DEMO)
    assert again.returncode == 2 and again.stdout == ""
    line = one_line(again.stderr)
    assert f"--out {out} already holds results (history.json, history.safetensors, backbone.safetensors" in line and "--overwrite" in line
    assert {name: (out / name).read_bytes() for name in before} == before
    replaced = frx("demo", "--out", out, "--epochs", "2", *TINY_DEMO, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr[-2000:]
    assert f"the new run is written into {out / '.frx-new'} and replaces the earlier run's files in {out} once complete" in replaced.stderr
    records = json.loads((out / "history.json").read_text())["records"]
    assert [r["epoch"] for r in records] == [0, 1, 2]  # this run's passes only, not appended to the first run's


def test_explain_does_not_train_its_demo_over_an_earlier_demo_run(tmp_path, frx):
    """A demo folder with an interrupted run's history and no backbone: frx explain says so instead of training there."""
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "history.json").write_text('{"an": "earlier run"}')
    proc = frx("explain", "--demo-dir", demo, "--out", tmp_path / "explained")
    assert proc.returncode == 2
    line = one_line(proc.stderr.split("\n", 1)[1])  # after the line that says it would train one
    assert line.startswith(f"frx explain: error: --demo-dir {demo} has no backbone.safetensors") and "already holds results (history.json)" in line
    assert (demo / "history.json").read_text() == '{"an": "earlier run"}' and not (tmp_path / "explained").exists()


# --------------------------------------------------------------------------- signals


def _frx_process(args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "frx_plugin", *map(str, args)], **kwargs)


def test_sigterm_stops_demo_with_a_nonzero_code_and_says_what_it_kept(tmp_path):
    out = tmp_path / "demo"
    proc = _frx_process(["demo", "--out", out, "--epochs", "100000", *TINY_DEMO], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + HANG_LIMIT_S
    while not (out / "history.json").exists():  # the first pass is written before training starts
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the demo wrote no history"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=HANG_LIMIT_S)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    records = json.loads((out / "history.json").read_text())["records"]  # valid JSON: written atomically
    last = stderr.strip().splitlines()[-1]
    passes = f"{len(records)} pass{'es' if len(records) != 1 else ''}"
    assert last == f"frx demo: interrupted (SIGTERM); kept: {out / 'history.json'} with {passes}, {out / 'history.safetensors'}", last
    assert "Traceback" not in stderr and not (out / "backbone.safetensors").exists()


def test_sigint_stops_analyze_and_leaves_the_earlier_analysis_as_it_was(tmp_path, frx):
    out = tmp_path / "out"
    assert frx("analyze", "--embeddings", embedding_file(tmp_path / "small.safetensors"), "--out", out, "--bootstrap", "5").returncode == 0
    earlier = (out / "analysis.json").read_bytes()
    # 60,000 samples: the verification of every pair keeps it busy long after its first progress line
    big = embedding_file(tmp_path / "big.safetensors", n_identities=15_000, per_identity=4, dim=32)
    terminal, stderr_end = pty.openpty()  # a terminal for stderr: the command draws its progress bar there
    proc = _frx_process(["analyze", "--embeddings", big, "--out", out, "--overwrite"], stdout=subprocess.PIPE, stderr=stderr_end)
    os.close(stderr_end)
    seen = b""
    try:
        while b"read" not in seen:  # the rows are read (into memory, for the pass and its verification): the analysis is under way
            seen += os.read(terminal, 4096)
    except OSError:  # the terminal closed: the process ended before its first progress line
        pass
    assert proc.poll() is None, seen.decode(errors="replace")
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=HANG_LIMIT_S)
    try:
        while chunk := os.read(terminal, 4096):
            seen += chunk
    except OSError:  # EIO once the process has closed its end
        pass
    os.close(terminal)
    text = seen.decode(errors="replace").replace("\r\n", "\n")
    assert proc.returncode == 128 + signal.SIGINT, text[-3000:]
    last = text.strip().splitlines()[-1].split("\r")[-1]
    assert last == f"frx analyze: interrupted (SIGINT); nothing written ({out / 'analysis.json'} from an earlier run left as it was)", last
    assert "Traceback" not in text
    assert (out / "analysis.json").read_bytes() == earlier
    assert [p.name for p in out.iterdir()] == ["analysis.json"]  # no temporary file left behind


# --------------------------------------------------------------------------- a missing optional module

#: Runs frx's main with insightface and onnxruntime absent, as in an install without the extra: importing them fails
#: as for a module that is not there (onnx stays: Lightning imports it when its metadata says it is installed).
WITHOUT_INSIGHTFACE = """
import importlib.machinery, sys
BLOCKED = ("insightface", "onnxruntime")
class Absent:
    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {spec.name!r}", name=spec.name)
    def exec_module(self, module):
        pass
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            return importlib.machinery.ModuleSpec(name, Absent())
        return None
sys.meta_path.insert(0, Block())
from frx_plugin.commands.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _without_insightface(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT_INSIGHTFACE, *map(str, args)], capture_output=True, text=True, timeout=HANG_LIMIT_S,
                          check=False)


def test_an_insightface_spec_without_the_extra_names_what_to_install(tmp_path):
    listed = _without_insightface("plugins")
    assert listed.returncode == 0 and "insightface" in listed.stdout  # the kind is listed: the plugin itself loads
    model = tmp_path / "w600k_r50.onnx"
    model.write_bytes(b"not opened: the module is missing first")
    probe = "synthetic,n_identities=10,images_per_identity=2,size=32"
    backbone = _without_insightface("analyze", "--backbone", f"insightface:{model}", "--probe", probe, "--out", tmp_path / "a")
    assert backbone.returncode == 2
    assert one_line(backbone.stderr) == (f"frx analyze: error: backbone 'insightface:{model}': needs the Python module 'insightface', "
                                         "which is not installed: pip install 'frx-plugin[insightface]'")
    estimator = _without_insightface("analyze", "--backbone", "synthetic:resnet-small", "--probe", probe, "--estimator", f"insightface:{model}",
                                     "--out", tmp_path / "b")
    assert estimator.returncode == 2
    line = one_line(estimator.stderr)
    assert f"estimator 'insightface:{model}'" in line and "pip install 'frx-plugin[insightface]'" in line
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# --------------------------------------------------------------------------- provenance


def test_a_benchmark_of_an_embedding_file_records_the_file_it_analysed(tmp_path, frx):
    path = embedding_file(tmp_path / "four-hundred.safetensors", n_identities=100, per_identity=4)
    out = tmp_path / "bench"
    proc = frx("benchmark", "--embeddings", path, "--bootstrap", "5", "--no-report", "--out", out)
    assert proc.returncode == 0, proc.stderr
    document = json.loads((out / "benchmark.json").read_text())
    assert document["probe"] == f"embedding-set file {path}"
    assert (document["n_samples"], document["n_identities"], document["attributes"]) == (400, 100, ["glasses", "age"])
    assert document["estimated"] == {}
    row = document["backbones"][0]
    assert row["data"] == {"source": f"embedding-set file {path}", "n_samples": 400, "n_identities": 100, "attributes": ["glasses", "age"]}
    assert row["analysis"]["n_samples"] == 400
    markdown = (out / "benchmark.md").read_text()
    assert markdown.startswith(f"# frx benchmark on embedding-set file {path}\n\n400 samples of 100 identities;")
    assert "synthetic" not in markdown
    # two files of different sizes: each row says what it held, the document does not pretend one count
    other = embedding_file(tmp_path / "two-hundred.safetensors", n_identities=50, per_identity=4, seed=1)
    both = tmp_path / "both"
    assert frx("benchmark", "--embeddings", path, "--embeddings", other, "--bootstrap", "5", "--no-report", "--out", both).returncode == 0
    document = json.loads((both / "benchmark.json").read_text())
    assert document["n_samples"] is None and document["probe"] == f"embedding-set files {path}, {other}"
    assert [r["data"]["n_samples"] for r in document["backbones"]] == [400, 200]
    markdown = (both / "benchmark.md").read_text()
    assert f"- `embeddings:{other}`: 200 samples of 50 identities (2 attributes: glasses, age)" in markdown
    # a probe set given with embedding files only would be recorded but never used: refused
    refused = frx("benchmark", "--embeddings", path, "--probe", "synthetic", "--out", tmp_path / "never")
    assert refused.returncode == 2 and "--probe" in one_line(refused.stderr)
