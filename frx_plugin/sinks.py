"""Where a pass's numbers go: the scalars' names, and the sinks a training loop hands them to.

A sink is any object with some of these methods (each optional):

- ``log_scalars(scalars: dict[str, float], step: int)``: the pass's numbers (:func:`scalar_metrics`);
- ``log_image(tag: str, image: Tensor, step: int)``: a CHW image in [0, 1] (the decoded faces);
- ``log_report(report, where: str)``: the whole report (a training log's one line);
- ``purge_after(step: int)``: a resumed run replaces what was logged after ``step`` (TensorBoard's purge);

and an ``every_rank`` attribute: ``True`` for a sink every process must feed (Lightning's
``callback_metrics``, which ``ModelCheckpoint`` and ``EarlyStopping`` read on every rank); the others
are fed by the global-zero process only.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from frx_plugin.report import Report

#: The scalar the loops log (1.0, at the pass's step) when a pass's history files could not be written.
HISTORY_WRITE_FAILED = "frx/history_write_failed"
#: The scalar the loops log (1.0, at the pass's step) when a pass failed.
PASS_FAILED = "frx/pass_failed"

__all__ = ["HISTORY_WRITE_FAILED", "LogSink", "PASS_FAILED", "WandbSink", "WriterSink", "as_sinks", "scalar_metrics", "summary_line"]


def scalar_metrics(report: Report) -> dict[str, float]:
    """The report's numbers under the names loggers use.

    ``frx/leakage/<attribute>`` (with ``/low`` and ``/high``), ``frx/<metric>/<attribute>``,
    ``frx/verification/tar_at_fmr_<fmr>``, ``frx/significance/<attribute>``, ``frx/errors/…``,
    ``frx/differential/<attribute>/{fnmr_ratio, fmr_ratio, fdr, garbe}``,
    the two-stage path's ``frx/recovery/…`` and the pass's cost ``frx/time/<part>_s``.
    """
    out: dict[str, float | None] = {}  # None and NaN are left out at the end
    for item in report.leakage:
        out[f"frx/leakage/{item.name}"] = item.leakage
        out[f"frx/leakage/{item.name}/low"] = item.leakage_low
        out[f"frx/leakage/{item.name}/high"] = item.leakage_high
        out[f"frx/{item.metric}/{item.name}"] = item.value
    if report.verification is not None:
        out[f"frx/verification/tar_at_fmr_{report.verification.fmr:g}"] = report.verification.tar
    for name, estimate in report.significance.items():
        out[f"frx/significance/{name}"] = estimate["value"]
        out[f"frx/significance/{name}/low"] = estimate["low"]
        out[f"frx/significance/{name}/high"] = estimate["high"]
    for kind, shares in report.error_attribution.items():
        prefix = "frx/errors" if kind == "all" else f"frx/errors/{kind}"
        for name, share in shares.items():
            out[f"{prefix}/{name}"] = share
    for item in (report.differentials or {}).get("attributes", []):
        for summary in ("fnmr_ratio", "fmr_ratio", "fdr", "garbe"):
            estimate = item.get(summary) or {}
            out[f"frx/differential/{item['name']}/{summary}"] = estimate.get("value")
    if report.recovery is not None:
        from frx_plugin.two_stage.measures import recovery_scalars

        out.update(recovery_scalars(report.recovery))
    for key, seconds in report.timing.items():
        out[f"frx/time/{key}"] = seconds
    return {k: float(v) for k, v in out.items() if v is not None and not math.isnan(float(v))}


def summary_line(report: Report, shown: int = 3) -> str:
    """One line for a training log: TAR, the most and least leaked attributes, and the pass's seconds."""
    parts = []
    if report.verification is not None:
        parts.append(f"TAR@FMR={report.verification.fmr:g} {report.verification.tar:.4f}")
    ranked = sorted((a for a in report.leakage if a.leakage == a.leakage), key=lambda a: a.leakage, reverse=True)
    if ranked:
        parts.append("most leaked " + ", ".join(f"{a.name} {a.leakage:.3f}" for a in ranked[:shown]))
        parts.append("least leaked " + ", ".join(f"{a.name} {a.leakage:.3f}" for a in ranked[::-1][:shown]))
    if report.timing:
        parts.append(f"{sum(report.timing.values()):.1f}s")
    return "  ".join(parts)


class WriterSink:
    """A TensorBoard ``SummaryWriter`` (torch's or tensorboardX's; anything with ``add_scalar(tag, value, step)``).

    After a resume it writes TensorBoard's purge marker (a session start at the first step after the
    checkpoint), so the passes the resumed run replaces are not shown twice.
    """

    every_rank = False

    def __init__(self, writer: Any) -> None:
        if not callable(getattr(writer, "add_scalar", None)):
            raise TypeError(f"writer must have add_scalar(tag, value, step) (a SummaryWriter), got {type(writer).__name__}")
        self.writer = writer

    def log_scalars(self, scalars: dict[str, float], step: int) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)

    def log_image(self, tag: str, image: Any, step: int) -> None:
        add_image = getattr(self.writer, "add_image", None)
        if callable(add_image):
            add_image(tag, image, global_step=step, dataformats="CHW")

    def purge_after(self, step: int) -> bool:
        """Write the purge marker at ``step + 1`` where the writer allows it; returns whether it did."""
        file_writer = getattr(self.writer, "_get_file_writer", None)
        if not callable(file_writer):
            return False
        proto = "tensorboardX.proto.event_pb2" if type(self.writer).__module__.startswith("tensorboardX") else \
            "tensorboard.compat.proto.event_pb2"
        try:
            import importlib

            event_pb2 = importlib.import_module(proto)
            event = event_pb2.Event(step=int(step) + 1, session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START))
            file_writer().add_event(event)
        except (ImportError, AttributeError, TypeError):  # a writer of another make: its events stay as they are
            return False
        return True


class WandbSink:
    """A Weights & Biases run (anything with ``log(metrics, step=...)``)."""

    every_rank = False

    def __init__(self, run: Any) -> None:
        if not callable(getattr(run, "log", None)):
            raise TypeError(f"wandb_run must have log(metrics, step=...) (a wandb run), got {type(run).__name__}")
        self.run = run

    def log_scalars(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(dict(scalars), step=step)


class LogSink:
    """Python ``logging``: one line per pass (TAR, the most and least leaked attributes, seconds) and its warnings."""

    every_rank = False

    def __init__(self, logger: logging.Logger | str = "frx") -> None:
        self.log = logging.getLogger(logger) if isinstance(logger, str) else logger

    def log_report(self, report: Report, where: str) -> None:
        self.log.info("frx: %s %s", where, summary_line(report))


def as_sinks(sinks: Any) -> list[Any]:
    """``sinks`` as a list; a ``SummaryWriter`` or a wandb run given as it is gets its sink."""
    if sinks is None:
        return []
    out = []
    for sink in (sinks if isinstance(sinks, (list, tuple)) else [sinks]):
        if any(callable(getattr(sink, m, None)) for m in ("log_scalars", "log_image", "log_report")):
            out.append(sink)
        elif callable(getattr(sink, "add_scalar", None)):
            out.append(WriterSink(sink))
        elif callable(getattr(sink, "log", None)):
            out.append(WandbSink(sink))
        else:
            raise TypeError(f"a sink must have log_scalars(scalars, step) (or be a SummaryWriter or a wandb run), "
                            f"got {type(sink).__name__}")
    return out
