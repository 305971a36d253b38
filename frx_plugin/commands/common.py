"""What the ``frx`` commands share: the progress bar, opening a model with its probe set, the command line,
the checks of output locations made before any work, and what a command keeps when a signal stops it."""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from frx_plugin.commands.messages import BAR, is_quiet, note_progress, plain_progress
from frx_plugin.errors import OutputError


def progress_bar():
    """Progress on stderr: a one-line bar on a terminal, else a plain line at most every few seconds
    (:func:`frx_plugin.commands.messages.plain_progress`); None with ``--quiet``."""
    if is_quiet():
        return None
    if not sys.stderr.isatty():
        return plain_progress()

    def show(done: int, total: int, stage: str) -> None:
        filled = int(30 * done / max(total, 1))
        end = "\n" if done >= total else ""
        BAR["open"] = True  # before drawing: a signal may arrive as soon as the line is out
        print(f"\r{stage:<16} [{'#' * filled}{'.' * (30 - filled)}] {done:,}/{total:,}", end=end, file=sys.stderr, flush=True)
        BAR["open"] = done < total
        note_progress(stage)

    return show


def open_model_and_probe(backbone: str, probe: str | None = None, pairs: str | None = None,
                         estimators: Sequence[str] = (), progress=None, check: Callable[[Any], None] | None = None):
    """The model of a backbone spec and the probe set to analyse it on (:func:`frx_plugin.specs.probe_for`).

    ``check(probe_set)``: called as soon as the probe set is open, before the model is opened when
    the probe set is given (``probe`` or ``pairs``), so that an option it refuses costs no model load.
    """
    from frx_plugin.specs import open_backbone, probe_for

    given = probe is not None or pairs is not None  # then opened first: its errors come before a long model load
    probe_set = probe_for(None, probe, pairs, estimators, progress) if given else None
    if probe_set is not None and check is not None:
        check(probe_set)
    model, facts = open_backbone(backbone)
    if probe_set is None:
        probe_set = probe_for(facts, estimators=estimators, progress=progress)
        if check is not None:
            check(probe_set)
    return model, probe_set


def command_line() -> str:
    """This process's ``frx`` command as typed (``frx`` plus the arguments, shell-quoted), for provenance."""
    import shlex

    return "frx " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "frx"


# --------------------------------------------------------------------------- options


def check_count(option: str, value: Any, minimum: int) -> None:
    """A ``ValueError`` naming ``option`` unless ``value`` is an integer of at least ``minimum``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{option} must be an integer of at least {minimum}, got {value!r}")


def check_rate(option: str, value: Any) -> None:
    """A ``ValueError`` naming ``option`` unless ``value`` is a number strictly between 0 and 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise ValueError(f"{option} must be a number in (0, 1), got {value!r}")


def attribute_list(option: str, text: str | None) -> list[str] | None:
    """The attribute names of a comma-separated option (None when not given); a list that names none is a ``ValueError``."""
    if text is None:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ValueError(f"{option} {text!r} names no attribute; give comma-separated names (e.g. {option} yaw,glasses), "
                         f"or leave {option} out to include every attribute")
    return names


# --------------------------------------------------------------------------- output locations


@dataclass
class _Watched:
    """An output folder and the result files in it, as they were when the command checked them."""

    folder: Path
    names: tuple[str, ...]
    before: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (inode, mtime_ns)


_watched: list[_Watched] = []


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_ino, status.st_mtime_ns


def _watch(folder: Path, names: Sequence[str]) -> None:
    entry = _Watched(folder, tuple(names))
    for name in entry.names:
        stamp = _stamp(folder / name)
        if stamp is not None:
            entry.before[name] = stamp
    _watched.append(entry)


def forget_outputs() -> None:
    """Forget the output locations checked so far (each ``frx`` command starts afresh)."""
    _watched.clear()


def watched_folders() -> list[Path]:
    """The output folders the running command checked, in order."""
    return [entry.folder for entry in _watched]


def _nearest_existing(path: Path) -> Path:
    path = Path(path)
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def _check_writable(path: Path, named: str) -> None:
    """``path`` can be made: its nearest existing folder is a folder in which a file can really be created.
    ``named``: how messages name the location (the option and the path)."""
    existing = _nearest_existing(path)
    if not existing.is_dir():
        raise OutputError(f"{named}: {existing} is a file, so nothing can be written under it")
    try:  # really try: permissions, a read-only filesystem, root's rights, quotas all answer here
        descriptor, probe = tempfile.mkstemp(prefix=".frx-write-check-", dir=existing)
        os.close(descriptor)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{named}: cannot write in {existing} ({exc.strerror or exc})") from None


def check_output_folder(path: str | Path, option: str = "--out", results: Sequence[str] = (), overwrite: bool = False,
                        any_file: bool = False) -> Path:
    """Check, before any work, that the folder ``path`` can take a command's ``results`` (file names in it).

    An :class:`~frx_plugin.errors.OutputError` naming ``option`` and the path when ``path`` is a
    file, lies under a file, or cannot be written (tried for real in the nearest folder that
    exists), and, unless ``overwrite``, when it already holds one of ``results`` (``any_file``: any
    file at all). Inside an ``frx`` command the folder is claimed (made if missing; see
    :mod:`frx_plugin.commands.outputs`), so that a second run into it is refused while this one runs. The result files are
    remembered, so that a command stopped by a signal can say which of them it wrote (:func:`describe_kept`).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path}: is a file, not a folder")
    _check_writable(path, f"{option} {path}")
    from frx_plugin.commands.outputs import LOCK_FILE, STAGING_FOLDER, claim_folder

    _watch(path, results)  # before the claim, which may already meet a full disk: the line then says what was kept
    claim_folder(path, option)  # before looking: a second run into the folder is refused while this one runs
    if path.is_dir() and not overwrite:
        present = (sorted(p.name for p in path.iterdir() if p.name not in (LOCK_FILE, STAGING_FOLDER)) if any_file
                   else [name for name in results if os.path.lexists(path / name)])
        if present:
            shown = ", ".join(present[:5]) + (" …" if len(present) > 5 else "")
            what, where = ("files", "an empty folder") if any_file else ("results", "another folder")
            raise OutputError(f"{option} {path} already holds {what} ({shown}), perhaps another run's; pick {where} or pass --overwrite")
    return path


def check_output_file(path: str | Path, option: str | None = "--out", overwrite: bool = False) -> Path:
    """Check, before any work, that the file ``path`` can be written: not a folder or a device, not under
    a file, writable, and (unless ``overwrite``) not there yet; an :class:`~frx_plugin.errors.OutputError` otherwise."""
    path = Path(path)
    named = f"{option} {path}" if option else str(path)
    if path.is_dir():
        raise OutputError(f"{named}: is a folder; name the file to write, e.g. {path / 'report.html'}")
    if os.path.lexists(path) and not path.is_file():
        raise OutputError(f"{named}: exists and is not a regular file")
    _check_writable(path.parent, named)
    if path.exists() and not overwrite:
        raise OutputError(f"{named} already exists, perhaps another run's; pass --overwrite to replace it, or --out FILE for another")
    _watch(path.parent, (path.name,))
    return path


def _describe(path: Path) -> str:
    if path.name == "history.json":
        try:
            passes = len(json.loads(path.read_text(encoding="utf-8"))["records"])
            return f"{path} with {passes} pass{'es' if passes != 1 else ''}"
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return str(path)


def describe_kept() -> str:
    """What the checked output locations hold now: the result files this run wrote, and earlier ones it left alone."""
    written: list[Path] = []
    earlier: list[Path] = []
    for entry in _watched:
        for name in entry.names:
            stamp = _stamp(entry.folder / name)
            if stamp is None:
                continue
            (earlier if entry.before.get(name) == stamp else written).append(entry.folder / name)
    text = "kept: " + ", ".join(_describe(p) for p in written) if written else "nothing written"
    if earlier:
        text += f" ({', '.join(str(p) for p in earlier)} from an earlier run left as {'they were' if len(earlier) > 1 else 'it was'})"
    return text


# --------------------------------------------------------------------------- signals


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived and the command stops where it is.

    A ``BaseException``, as ``KeyboardInterrupt`` is, so that no ``except Exception`` (a pass's error
    policy, a failing backbone's row) swallows it; files already written stay as they are (every
    file frx writes is replaced atomically).
    """

    def __init__(self, signum: int) -> None:
        super().__init__(int(signum))
        self.signum = int(signum)

    @property
    def signal_name(self) -> str:
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports a process the signal ended (130 SIGINT, 143 SIGTERM)."""
        return 128 + self.signum


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []  # the signals stop_on_signals turned into Interrupted, in order


def signal_received() -> Interrupted | None:
    """The stop that a signal asked for during this command, if one did: a library that swallows the
    :class:`Interrupted` (an import cut short, a bare ``except``) fails later in its own words, and that
    failure is the signal's doing, not a bug."""
    return Interrupted(_received[0]) if _received else None


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Inside: SIGINT and SIGTERM raise :class:`Interrupted` (in the main thread only); the former handlers come back after.

    Lightning's Trainer adds its own SIGTERM handler in front of this one during ``fit`` and keeps
    calling it, so a training stops at once too (not at the end of an epoch, and not as the
    ``SystemExit`` with exit code 0 that Lightning's own handling ends in).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        _received.append(int(signum))
        raise Interrupted(signum)

    _received.clear()
    previous = {signum: signal.signal(signum, stop) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def ignore_signals() -> None:
    """Ignore SIGINT and SIGTERM from now on (while a command says how it stopped; :func:`stop_on_signals` restores them)."""
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
