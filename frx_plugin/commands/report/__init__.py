"""``frx report DIR``: one self-contained ``report.html`` for whatever frx wrote into a folder (see :mod:`.page`)."""

from frx_plugin.commands.report.page import KNOWN_FILES, REPORT_FILE, SCRIPT, write_report

__all__ = ["write_report", "REPORT_FILE", "KNOWN_FILES", "SCRIPT"]
