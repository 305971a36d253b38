"""A full disk for real: ``frx demo --out`` and ``frx analyze --out`` on a small tmpfs that fills up end with one line
naming the folder and what was kept, a non-zero exit code and no traceback. Skipped where no tmpfs can be mounted
(mounting needs root or CAP_SYS_ADMIN); tests/commands/test_no_run_lost.py simulates the writers' errors everywhere."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest

from frx_plugin.commands.outputs import LOCK_FILE, STAGING_FOLDER
from tests.commands.test_cli_reliability import TINY_DEMO, embedding_file, one_line

NO_SPACE = "No space left on device"


@pytest.fixture
def small_disk(tmp_path):
    """``make(size)``: a folder on a tmpfs of ``size`` (e.g. ``"800k"``), unmounted after the test."""
    if not sys.platform.startswith("linux"):
        pytest.skip("a real full filesystem needs a Linux tmpfs")
    mounted: list[Path] = []

    def make(size: str) -> Path:
        folder = tmp_path / f"disk-{size}"
        folder.mkdir()
        try:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True)
        except OSError as exc:
            pytest.skip(f"no mount command to make a real full filesystem: {exc}")
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {' '.join((done.stderr or done.stdout).split())}")
        mounted.append(folder)
        return folder

    yield make
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _fill(disk: Path) -> None:
    """Take every free byte of ``disk``."""
    with open(disk / "filler", "wb", buffering=0) as handle:  # unbuffered: nothing left to flush on close
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def test_demo_on_a_real_full_disk_is_one_line_naming_the_folder_and_what_was_kept(small_disk, frx):
    pytest.importorskip("lightning")
    out = small_disk("800k") / "demo"  # room for the history of 3 passes (about 0.5 MB with its atomic rewrites), not the 1.3 MB backbone
    result = frx("demo", "--out", out, "--epochs", "2", *TINY_DEMO)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line == (f"frx demo: error: {out / 'backbone.safetensors'}: {NO_SPACE}; "
                    f"kept: {out / 'history.json'} with 3 passes, {out / 'history.safetensors'}"), line
    assert len(json.loads((out / "history.json").read_text())["records"]) == 3  # what it says it kept is whole
    assert not (out / LOCK_FILE).exists()


def test_demo_overwrite_on_a_real_full_disk_leaves_the_earlier_run_whole(small_disk, frx):
    pytest.importorskip("lightning")
    out = small_disk("800k") / "demo"
    assert frx("demo", "--out", out, "--epochs", "2", *TINY_DEMO).returncode == 2  # the first run keeps its history only
    earlier = {name: (out / name).read_bytes() for name in ("history.json", "history.safetensors")}
    again = frx("demo", "--out", out, "--epochs", "1", "--overwrite", *TINY_DEMO)
    assert again.returncode == 2, again.stderr[-3000:]
    line = again.stderr.strip().splitlines()[-1]
    assert line.startswith(f"frx demo: error: {out}") and NO_SPACE in line, line
    assert line.endswith(f"; nothing written ({out / 'history.json'}, {out / 'history.safetensors'} from an earlier run "
                         "left as they were)"), line
    assert {name: (out / name).read_bytes() for name in earlier} == earlier
    assert not (out / STAGING_FOLDER).exists() and not (out / LOCK_FILE).exists()


def test_analyze_on_a_real_full_disk_is_one_line_naming_the_folder(small_disk, frx, tmp_path):
    embeddings = embedding_file(tmp_path / "set.safetensors", n_identities=50)
    out = small_disk("16k") / "analysis"  # analysis.json is about 25 kB
    result = frx("analyze", "--embeddings", embeddings, "--bootstrap", "0", "--out", out)
    assert result.returncode == 2, result.stderr[-3000:]
    assert one_line(result.stderr) == f"frx analyze: error: {NO_SPACE} (writing into {out}); nothing written", result.stderr
    assert not out.exists()  # the folder the run made, and its lock, are gone


def test_analyze_overwrite_on_a_disk_already_full_names_the_folder_and_keeps_the_earlier_run(small_disk, frx, tmp_path):
    embeddings = embedding_file(tmp_path / "set.safetensors", n_identities=50)
    disk = small_disk("64k")
    out = disk / "analysis"
    assert frx("analyze", "--embeddings", embeddings, "--bootstrap", "0", "--out", out).returncode == 0
    earlier = (out / "analysis.json").read_bytes()
    _fill(disk)
    result = frx("analyze", "--embeddings", embeddings, "--bootstrap", "0", "--out", out, "--overwrite")
    assert result.returncode == 2, result.stderr[-3000:]
    assert one_line(result.stderr) == (f"frx analyze: error: {out}: {NO_SPACE}; nothing written "
                                       f"({out / 'analysis.json'} from an earlier run left as it was)"), result.stderr
    assert (out / "analysis.json").read_bytes() == earlier
    assert sorted(p.name for p in out.iterdir()) == ["analysis.json"]  # no lock file left behind
