"""The ``frx`` command's entry point: the command line imported under a Ctrl-C guard.

A Ctrl-C that lands while Python is still importing the command line (before :func:`frx_plugin.commands.cli.main`
has begun) is one line and exit code 130, as it is at any later moment.
"""

from __future__ import annotations

import signal
import sys


def main() -> int:
    try:
        from frx_plugin.commands.cli import main as command_line_main
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C does not cut the line short
        print("frx: interrupted (SIGINT); nothing written", file=sys.stderr, flush=True)
        return 128 + signal.SIGINT
    return command_line_main()
