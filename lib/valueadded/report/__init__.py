"""The release report: a self-contained HTML page per run, read from the Delta tables.

`data` reads one run's partition of the tables (as of the versions it wrote), `summaries`
computes what is shown (pure), `charts` draws it (matplotlib to inline SVG), `html` lays
it out. `write_report` is the entry point (`valueadded report`, `valueadded release --report`).
"""

from valueadded.report.html import build_report, default_report_path, write_report

__all__ = ["build_report", "default_report_path", "write_report"]
