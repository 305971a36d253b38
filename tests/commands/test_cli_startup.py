"""The ``frx`` command starts at once: it parses before importing torch, Lightning or a plugin, and a Ctrl-C
at any moment is one line with exit code 130 (subprocesses: a fresh interpreter is the point)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

#: Runs frx's main on the arguments, then prints the modules it imported.
LOADED = """
import sys
from frx_plugin.commands.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("MODULES", " ".join(sorted(sys.modules)))
"""

HEAVY = ("torch", "lightning", "pytorch_lightning", "numpy", "frx_lightning.callback", "frx_lightning.demo", "frx_insightface.readers")


def _loaded(*args: str) -> set[str]:
    proc = subprocess.run([sys.executable, "-c", LOADED, *args], capture_output=True, text=True, timeout=120)
    line = next(line for line in proc.stdout.splitlines() if line.startswith("MODULES "))
    return set(line.split()[1:])


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m in HEAVY or m.split(".")[0] in HEAVY)


@pytest.mark.parametrize("args", [("--help",), ("--version",), ("analyze", "--help"), ("analyze", "--no-such-option"),
                                  ("demo", "--help"), ("demo", "--epochs", "many"), ("no-such-command",)])
def test_help_version_and_option_errors_import_neither_torch_nor_lightning(args):
    assert _heavy(_loaded(*args)) == []


@pytest.mark.parametrize("args", [("--version",), ("analyze", "--help"), ("report", "--no-such-option"), ("explain", "--help")])
def test_frx_own_commands_parse_without_loading_any_plugin(args):
    modules = _loaded(*args)
    assert sorted(m for m in modules if m.split(".")[0] in ("frx_lightning", "frx_insightface", "pluggy")) == []


def test_the_demo_is_still_listed_and_parsed_through_its_plugin():
    proc = subprocess.run([sys.executable, "-m", "frx_plugin", "demo", "--epochs", "many"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "argument --epochs: invalid int value: 'many'" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "frx_plugin", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "demo" in proc.stdout and "analyze" in proc.stdout


@pytest.mark.parametrize("delay", [0.15, 0.4, 0.8, 1.5, 3.0])
def test_ctrl_c_at_any_moment_is_one_line_and_exit_code_130(tmp_path, delay):
    # an untrained backbone on the synthetic probe set: imports, rendering and embedding keep it busy for seconds
    proc = subprocess.Popen([sys.executable, "-m", "frx_plugin", "analyze", "--backbone", "resnet-small", "--out", str(tmp_path / "out"),
                             "--bootstrap", "5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("frx") and "interrupted (SIGINT)" in lines[0], stderr[-3000:]
    assert stdout == ""
