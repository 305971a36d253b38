"""What the ``frx`` commands share: the progress bar, opening a model with its probe set, the command line."""

from __future__ import annotations

import sys
from typing import Sequence


def progress_bar():
    """A one-line progress bar on stderr when it is a terminal; None otherwise."""
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int, stage: str) -> None:
        filled = int(30 * done / max(total, 1))
        end = "\n" if done >= total else ""
        print(f"\r{stage:<16} [{'#' * filled}{'.' * (30 - filled)}] {done:,}/{total:,}", end=end, file=sys.stderr, flush=True)

    return show


def open_model_and_probe(backbone: str, probe: str | None = None, pairs: str | None = None,
                         estimators: Sequence[str] = (), progress=None):
    """The model of a backbone spec and the probe set to analyse it on (:func:`frx_plugin.specs.probe_for`)."""
    from frx_plugin.specs import open_backbone, probe_for

    given = probe is not None or pairs is not None  # then opened first: its errors come before a long model load
    probe_set = probe_for(None, probe, pairs, estimators, progress) if given else None
    model, facts = open_backbone(backbone)
    return model, probe_set if given else probe_for(facts, estimators=estimators, progress=progress)


def command_line() -> str:
    """This process's ``frx`` command as typed (``frx`` plus the arguments, shell-quoted), for provenance."""
    import shlex

    return "frx " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "frx"
