"""Fixtures of the command-line tests."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest


@pytest.fixture
def frx(capsys, monkeypatch):
    """``frx ARGS...`` in this process: its exit code and what it printed."""
    from frx_plugin.commands.cli import main

    def run(*args):
        args = [str(a) for a in args]
        monkeypatch.setattr(sys, "argv", ["frx", *args])
        code = main(args)
        printed = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=printed.out, stderr=printed.err)

    return run
