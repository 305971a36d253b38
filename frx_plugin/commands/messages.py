"""What an ``frx`` command shows besides its results: frx's own warnings as one line each (no source line
echoed), progress (a bar on a terminal, a plain line at most every :data:`PLAIN_EVERY_S` seconds in a log or
CI), and nothing of the third-party notices a user cannot act on (deprecations, tips, Lightning's INFO
lines). ``--verbose`` shows everything as Python and the libraries print it; ``--quiet`` silences progress.

Only inside frx's commands: a user's own training keeps every warning and log line it had.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

FRX_MODULES = ("frx_plugin", "frx_lightning", "frx_insightface")
#: Loggers whose INFO lines (accelerator lines, tips, "`Trainer.fit` stopped") frx's commands leave out.
QUIET_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning")
#: Seconds between two plain progress lines (not on a terminal); the environment's FRX_PROGRESS_EVERY_S overrides it.
PLAIN_EVERY_S = 10.0
#: Seconds of a command without any progress shown after which it says it is still working (FRX_HEARTBEAT_S overrides it).
HEARTBEAT_S = 30.0


def _seconds(variable: str, default: float) -> float:
    import os

    try:
        return float(os.environ[variable])
    except (KeyError, ValueError):
        return default


def progress_every_s(default: float = PLAIN_EVERY_S) -> float:
    """Seconds between two plain progress lines of a step: the environment's FRX_PROGRESS_EVERY_S, else ``default``."""
    return _seconds("FRX_PROGRESS_EVERY_S", default)


_options = {"verbose": False, "quiet": False}
BAR = {"open": False}  # a progress bar is drawn on stderr's current line
_activity: dict[str, Any] = {"stage": None, "last": 0.0}  # the last progress shown, for the heartbeat


def note_progress(stage: str | None) -> None:
    """Progress was shown (a bar, a line, a training step): the heartbeat waits a full interval again."""
    _activity["stage"], _activity["last"] = stage, time.monotonic()


@contextmanager
def heartbeat(name: str) -> Iterator[None]:
    """Inside: a line ``frx NAME: still working …`` after every :data:`HEARTBEAT_S` seconds without progress shown
    (a step with no bar of its own: bootstrap, verification, decoder fitting); none with ``--quiet``."""
    if _options["quiet"]:
        yield
        return
    import threading

    every, started, stop = _seconds("FRX_HEARTBEAT_S", HEARTBEAT_S), time.monotonic(), threading.Event()
    _activity.update(stage=None, last=started)

    def beat() -> None:
        while not stop.wait(min(1.0, every / 2)):
            now = time.monotonic()
            if now - _activity["last"] >= every:
                _activity["last"] = now
                end_progress_line()
                after = f" (after {_activity['stage']})" if _activity["stage"] else ""
                print(f"frx {name}: still working{after}, {now - started:.0f}s so far", file=sys.stderr, flush=True)

    thread = threading.Thread(target=beat, name="frx-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def end_progress_line() -> None:
    """End a progress bar's unfinished line, so that a message after it starts a line of its own."""
    if BAR["open"]:
        print(file=sys.stderr, flush=True)
        BAR["open"] = False


def set_output(verbose: bool = False, quiet: bool = False) -> None:
    """The command line's ``--verbose`` and ``--quiet``."""
    _options["verbose"], _options["quiet"] = bool(verbose), bool(quiet)


def is_verbose() -> bool:
    return _options["verbose"]


def is_quiet() -> bool:
    return _options["quiet"]


def is_frx_warning(message: Any, filename: str) -> bool:
    """A warning of frx's own: raised in one of its modules, or saying it is frx's."""
    path = str(filename).replace("\\", "/")
    return str(message).startswith("frx") or any(f"/{module}/" in path for module in FRX_MODULES)


def one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


@contextmanager
def command_messages(name: str) -> Iterator[None]:
    """Inside: frx's warnings print as ``frx NAME: warning: ...`` (one line), others are dropped, and the
    libraries' INFO lines are left out; with ``--verbose``, nothing changes."""
    if _options["verbose"]:
        yield
        return

    def show(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        if not is_frx_warning(message, filename):
            return  # a third-party notice: --verbose shows it
        text = one_line(str(message))
        for prefix in ("frx:", f"frx {name}:"):  # the line says it once
            if text.startswith(prefix):
                text = text[len(prefix):].lstrip()
        end_progress_line()
        print(f"frx {name}: warning: {text}", file=sys.stderr, flush=True)

    with warnings.catch_warnings(), quiet_library_logs():
        warnings.showwarning = show
        yield


@contextmanager
def quiet_library_logs() -> Iterator[None]:
    """Inside: the libraries' INFO lines are left out (not with ``--verbose``). A library that sets its loggers' level
    when it is imported (Lightning does) is quieted by a call after its import too."""
    if _options["verbose"]:
        yield
        return
    levels = {logger: logging.getLogger(logger).level for logger in QUIET_LOGGERS}
    for logger in QUIET_LOGGERS:
        logging.getLogger(logger).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in levels.items():
            logging.getLogger(logger).setLevel(level)


def plain_progress(every_s: float | None = None):
    """Progress for a log or CI: ``show(done, total, stage)`` prints a plain line at most every ``every_s`` seconds
    of a stage (and its last one, when it printed any), so a short stage prints nothing."""
    every_s = progress_every_s() if every_s is None else every_s
    state: dict[str, Any] = {"stage": None, "started": 0.0, "last": 0.0, "printed": False}

    def show(done: int, total: int, stage: str) -> None:
        now = time.monotonic()
        _activity["stage"] = stage
        if stage != state["stage"]:
            state.update(stage=stage, started=now, last=now, printed=False)
        if now - state["last"] >= every_s or (done >= total and state["printed"]):
            state["last"], state["printed"] = now, True
            note_progress(stage)
            percent = 100.0 * done / max(total, 1)
            print(f"frx: {stage} {done:,}/{total:,} ({percent:.0f}%, {now - state['started']:.0f}s)", file=sys.stderr, flush=True)

    return show
