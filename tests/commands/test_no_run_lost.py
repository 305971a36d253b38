"""No run lost, whatever happens: an output folder has one writer at a time, --overwrite replaces an earlier run only
once the new one is complete, and a full disk is one line saying what was kept (subprocesses where concurrency or a
signal is the point)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from safetensors import SafetensorError

from frx_plugin.commands.outputs import LOCK_FILE, STAGING_FOLDER
from frx_plugin.history import atomic_write
from tests.commands.test_cli_reliability import TINY_DEMO, embedding_file, one_line
from tests.ddp_launch import HANG_LIMIT_S

pytest.importorskip("lightning")


FULL_DISK = 'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'


def _frx(*args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "frx_plugin", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kwargs)


def test_two_analyze_runs_into_one_empty_folder_one_is_refused_by_name(tmp_path):
    big = embedding_file(tmp_path / "big.safetensors", n_identities=15_000, per_identity=4, dim=32)
    out = tmp_path / "out"
    first, second = (_frx("analyze", "--embeddings", big, "--out", out, "--bootstrap", "50") for _ in range(2))
    results = [(proc, *proc.communicate(timeout=HANG_LIMIT_S)) for proc in (first, second)]
    codes = sorted(proc.returncode for proc, _, _ in results)
    assert codes == [0, 2], [stderr[-2000:] for _, _, stderr in results]
    (winner, won, _), (_, _, refused) = sorted(results, key=lambda r: r[0].returncode)
    assert f"wrote {out / 'analysis.json'}" in won
    line = one_line(refused)
    assert line.startswith(f"frx analyze: error: --out {out} is being written by another frx run (pid {winner.pid}: frx analyze"), line
    assert sorted(p.name for p in out.iterdir()) == ["analysis.json"]  # the claim went with its run


def test_a_claim_dies_with_its_process(tmp_path, frx):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom frx_plugin.commands.outputs import claim_folder, start_claiming\n"
                               f"start_claiming(); claim_folder({str(out)!r}); print('claimed', flush=True); time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "claimed"
    small = embedding_file(tmp_path / "small.safetensors")
    refused = frx("analyze", "--embeddings", small, "--out", out, "--bootstrap", "0")
    assert refused.returncode == 2 and f"is being written by another frx run (pid {holder.pid}:" in one_line(refused.stderr)
    holder.kill()  # no chance to clean up: the system releases the lock
    holder.wait()
    assert (out / LOCK_FILE).exists()
    done = frx("analyze", "--embeddings", small, "--out", out, "--bootstrap", "0")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["analysis.json"]


def test_demo_overwrite_interrupted_leaves_the_earlier_run_whole(tmp_path):
    out = tmp_path / "demo"
    earlier = _frx("demo", "--out", out, "--epochs", "1", *TINY_DEMO)
    assert earlier.wait(timeout=HANG_LIMIT_S) == 0, earlier.communicate()
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert {"history.json", "history.safetensors", "backbone.safetensors", "leakage.png", "report.html"} <= set(before)
    proc = _frx("demo", "--out", out, "--epochs", "100000", "--seed", "1", "--overwrite", *TINY_DEMO)
    deadline = time.monotonic() + HANG_LIMIT_S
    while not (out / STAGING_FOLDER / "history.json").exists():  # the new run's first pass is written, beside the earlier run
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the new run wrote no history"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=HANG_LIMIT_S)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "from an earlier run left as they were" in stderr.strip().splitlines()[-1]
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert not (out / STAGING_FOLDER).exists()


def test_demo_overwrite_replaces_the_earlier_run_once_complete(tmp_path, frx):
    out = tmp_path / "demo"
    assert frx("demo", "--out", out, "--epochs", "1", *TINY_DEMO).returncode == 0
    (out / "decoded.png").write_bytes(b"an earlier two-stage run's figure")
    first = json.loads((out / "history.json").read_text())
    again = frx("demo", "--out", out, "--epochs", "2", "--overwrite", *TINY_DEMO)
    assert again.returncode == 0, again.stderr
    assert len(json.loads((out / "history.json").read_text())["records"]) == len(first["records"]) + 1
    assert not (out / "decoded.png").exists() and not (out / STAGING_FOLDER).exists()  # nothing of the earlier run mixed in
    wrote = again.stdout.strip().splitlines()[-1]
    assert all(str(out / name) in wrote for name in ("history.json", "history.safetensors", "backbone.safetensors", "leakage.png",
                                                        "report.html"))


def test_demo_on_a_full_disk_is_one_line_naming_the_file_and_what_was_kept(tmp_path, frx, monkeypatch):
    import frx_plugin.history as history

    def full(tensors, path, metadata=None):
        raise SafetensorError(FULL_DISK)

    monkeypatch.setattr(history, "save_file", full)
    out = tmp_path / "demo"
    result = frx("demo", "--out", out, "--epochs", "2", *TINY_DEMO)
    assert result.returncode == 2, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"frx demo: error: {out / 'history.safetensors'}: No space left on device; "), line
    assert "kept:" in line or "nothing written" in line
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr


def test_a_writer_error_on_a_full_disk_names_the_file_not_its_temporary(tmp_path):
    with pytest.raises(OSError) as caught:
        atomic_write(tmp_path / "history.safetensors", lambda tmp: (_ for _ in ()).throw(SafetensorError(FULL_DISK)))
    assert caught.value.errno == 28 and caught.value.filename == str(tmp_path / "history.safetensors")
    with pytest.raises(OSError) as caught:
        atomic_write(tmp_path / "a.json", lambda tmp: (_ for _ in ()).throw(OSError(28, "No space left on device", str(tmp))))
    assert caught.value.filename == str(tmp_path / "a.json")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_in_safetensors_0_8_words_is_the_oserror_naming_the_file(tmp_path):
    """safetensors 0.8 says ``I/O error: ... (os error 28)`` (not ``IoError(Os { code: 28 ...``): on a real full disk
    the demo's backbone.safetensors was an internal error with a traceback (tests/commands/test_full_disk.py)."""
    said = "Error while serializing: I/O error: No space left on device (os error 28)"
    with pytest.raises(OSError) as caught:
        atomic_write(tmp_path / "backbone.safetensors", lambda tmp: (_ for _ in ()).throw(SafetensorError(said)))
    assert caught.value.errno == 28 and caught.value.filename == str(tmp_path / "backbone.safetensors")
    assert list(tmp_path.iterdir()) == []
