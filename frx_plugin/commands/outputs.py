"""No run lost: an output folder is claimed by one ``frx`` command at a time, and a run that replaces an
earlier one (``--overwrite``) writes beside it and moves its files in only once it is complete.

A claim is an exclusive ``flock`` on ``FOLDER/.frx-lock`` (which records the process and its command
line): a second command into the same folder is refused by name while the first runs, and the
system releases the lock when a process ends however it ends. The lock file is removed (and a folder
the claim created, when it stayed empty) when the command ends.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from frx_plugin.errors import OutputError

LOCK_FILE = ".frx-lock"
STAGING_FOLDER = ".frx-new"


@dataclass
class _Claim:
    folder: Path
    descriptor: int
    created: list[Path]  # the folders the claim made, deepest last


_claims: dict[Path, _Claim] = {}
_active = {"on": False}


def start_claiming() -> None:
    """From now on (one ``frx`` command), :func:`claim_folder` claims for real; outside a command it does nothing."""
    _active["on"] = True


def _launched_rank() -> bool:
    """A process that a multi-process launcher started for a rank above 0 (it re-runs the command of rank 0, which holds the claim)."""
    return any(os.environ.get(name, "0") not in ("", "0") for name in ("LOCAL_RANK", "RANK"))


def _holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        text = ""
    return f" ({text})" if text else ""


def claim_folder(folder: str | Path, option: str = "--out") -> None:
    """Claim ``folder`` for this command (made if missing); another command holding it is an :class:`OutputError` naming it."""
    folder = Path(folder)
    if not _active["on"] or _launched_rank() or folder.resolve() in _claims:
        return
    import fcntl

    created = []
    for parent in reversed([folder, *folder.parents]):
        if not parent.exists():
            created.append(parent)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILE
    while True:
        descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(descriptor)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise OutputError(f"{option} {folder} is being written by another frx run{_holder(lock)}; wait for it to end, "
                              f"or pick another folder") from None
        try:  # the holder before may have removed the file between our open and our lock: then lock the new one
            if os.fstat(descriptor).st_ino == os.stat(lock).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(descriptor)
    _claims[folder.resolve()] = _Claim(folder, descriptor, created)  # first: release_claims removes the lock whatever follows
    try:
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"pid {os.getpid()}: frx {' '.join(sys.argv[1:])}".encode())
    except OSError as exc:  # a full disk already: the folder is named, before any work
        raise OSError(exc.errno, exc.strerror, str(folder)) from None


def release_claims() -> None:
    """Give up every claim of this command: the lock files go, and the folders a claim made if they stayed empty."""
    _active["on"] = False
    for claim in list(_claims.values()):
        try:
            (claim.folder / LOCK_FILE).unlink(missing_ok=True)  # before closing: nobody locks a file about to vanish
        finally:
            os.close(claim.descriptor)
        for folder in reversed(claim.created):
            try:
                folder.rmdir()
            except OSError:
                break
    _claims.clear()


# --------------------------------------------------------------------------- replacing an earlier run


def staging_folder(folder: str | Path, results: Sequence[str]) -> Path:
    """Where a run writes its ``results``: ``folder`` itself when it holds none of them yet, else a fresh
    ``FOLDER/.frx-new`` beside the earlier run's (moved in by :func:`replace_results` once the run is complete)."""
    folder = Path(folder)
    if not any(os.path.lexists(folder / name) for name in results):
        return folder
    stage = folder / STAGING_FOLDER
    if not _launched_rank():  # a launched rank re-runs the command into the folder rank 0 made
        shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True, exist_ok=True)
    return stage


def discard_staging(stage: Path, folder: str | Path) -> None:
    """Remove an unfinished run's staging folder (the earlier run stays whole); nothing when it wrote into ``folder`` itself."""
    if Path(stage) != Path(folder) and not _launched_rank():
        shutil.rmtree(stage, ignore_errors=True)


def replace_results(stage: Path, folder: str | Path, results: Sequence[str]) -> None:
    """Move a complete run's ``results`` from ``stage`` into ``folder``, replacing the earlier run's (and removing
    the earlier run's files this run did not write). SIGINT and SIGTERM wait until the move is over."""
    folder = Path(folder)
    if Path(stage) == folder:
        return
    blocked = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        for name in results:
            if os.path.lexists(stage / name):
                os.replace(stage / name, folder / name)
            elif os.path.lexists(folder / name):
                (folder / name).unlink()
        shutil.rmtree(stage, ignore_errors=True)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
