"""The release report: one self-contained HTML page per run (no script, no network).

    valueadded report --output OUTPUT --year 2024 --key-stage ks2 --stage validated

`build_report` turns `ReleaseData` into HTML (pure); `write_report` reads a run's tables
and writes the page (by default `OUTPUT/reports/report-<year>-<key stage>-<stage>.html`).
Sections: headline counts and national figures, national estimates by prior attainment
group, the distribution of pupil progress, a funnel plot of school scores, attainment
against progress in quadrants, trusts against their schools, the CVA models, the
reconciliation of rows in and out, suppression counts and the run's provenance.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
from markupsafe import Markup

from valueadded.io.runlog import code_version
from valueadded.io.snapshot import find_run
from valueadded.report import charts
from valueadded.report.data import ReleaseData, read_release
from valueadded.report.summaries import (
    HEADLINE_PROGRESS,
    band_counts,
    cva_models,
    estimates_table,
    ordered_subjects,
    progress_table,
    quadrant_counts,
    reconciliation,
)
from valueadded.rollup.measures import MEASURES

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent / "templates"
REPORTS_DIR = "reports"


def default_report_path(output_dir: Path, year: int, key_stage: str, data_stage: str) -> Path:
    return Path(output_dir) / REPORTS_DIR / f"report-{int(year)}-{key_stage}-{data_stage}.html"


def format_value(value, digits: int | None = None) -> str:
    """A table cell: thousands separators for counts, `digits` decimals for floats, '-' for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        if digits is None:
            return f"{int(value):,}" if float(value).is_integer() else f"{float(value):,.4g}"
        return f"{float(value):,.{digits}f}"
    return str(value)


@dataclass(frozen=True)
class Table:
    """A table ready for the template: column labels, formatted rows, numeric columns."""

    columns: list[str]
    rows: list[list[str]]
    numeric: list[bool]


def table(frame: pd.DataFrame, digits: dict[str, int] | None = None) -> Table:
    digits = digits or {}
    columns = list(frame.columns)
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c]) for c in columns]
    rows = [[format_value(v, digits.get(c)) for c, v in zip(columns, record)] for record in frame.itertuples(index=False)]
    return Table([c.replace("_", " ") for c in columns], rows, numeric)


def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True, undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True,
    )
    environment.filters["num"] = format_value
    environment.filters["label"] = lambda name: str(name).replace("_", " ")
    return environment


def _headline(data: ReleaseData) -> list[tuple[str, str]]:
    counts = data.run.row_counts
    pupils = counts.get("pupil_results", {})
    rejected = sum(c.get("rows_rejected", 0) for c in counts.get("inputs", {}).values())
    headline = HEADLINE_PROGRESS[data.run.key_stage][0]
    return [
        ("pupils included", format_value(pupils.get("included"))),
        ("pupils excluded (with a reason)", format_value(pupils.get("excluded"))),
        ("input rows rejected", format_value(rejected)),
        (f"schools with a shown {headline.replace('_', ' ')}", format_value(int((data.schools.measure == headline).sum()))),
        (f"trusts with a shown {headline.replace('_', ' ')}", format_value(int((data.trusts.measure == headline).sum()))),
        ("schools identified", format_value(data.identified_schools)),
    ]


def build_report(data: ReleaseData, generated_at: datetime | None = None) -> str:
    """The report's HTML for one run's data (no I/O)."""
    run, key_stage = data.run, data.run.key_stage
    subjects = ordered_subjects(key_stage, data.progress)
    estimate_subjects = ordered_subjects(key_stage, data.national_estimates.subject.unique())
    headline = tuple(m for m in HEADLINE_PROGRESS[key_stage] if m in set(data.schools.measure))
    with_quadrant = set(data.schools.measure[data.schools.quadrant.notna()])
    order = [m.name for m in MEASURES[key_stage]]
    quadrant_measures = sorted(with_quadrant, key=lambda m: (order.index(m) if m in order else len(order), m))
    started = time.perf_counter()
    figures = [
        charts.estimates_chart(data.national_estimates, estimate_subjects),
        charts.progress_chart(data.progress, subjects),
        charts.funnel_chart(data.schools, headline),
        charts.quadrant_chart(data.schools, quadrant_measures),
        charts.trust_chart(data.trusts, data.schools, headline),
    ]
    log.info("report charts drawn in %.2f s", time.perf_counter() - started)
    models = cva_models(data.cva_model)
    for model in models:
        coefficients = model.pop("coefficients", None)
        model["table"] = None if coefficients is None else table(
            coefficients, {"term_mean": 4, "estimate": 4, "std_error": 4, "lower": 4, "upper": 4}
        )
    accounts = reconciliation(run.row_counts)
    context = {
        "run": run,
        "title": f"{run.year} {key_stage.upper()} {run.data_stage} release",
        "generated_at": (generated_at or datetime.now(timezone.utc)).isoformat(timespec="seconds"),
        "report_version": code_version(),
        "headline": _headline(data),
        "charts": {chart.key: chart for chart in figures},
        "svg": {chart.key: Markup(chart.svg) for chart in figures},
        "national": table(data.national, {"score": 3, "lower": 3, "upper": 3}),
        "estimates": table(estimates_table(data.national_estimates, key_stage), {"estimate": 3, "outcome_sd": 3, "progress_sd": 3, "cap": 3}),
        "progress": table(progress_table(data.progress, key_stage), {"mean": 3, "sd": 3, "p1": 2, "p10": 2, "p50": 2, "p90": 2, "p99": 2}),
        "school_bands": table(band_counts(data.schools, headline)),
        "trust_bands": table(band_counts(data.trusts, headline)),
        "quadrants": table(quadrant_counts(data.schools)),
        "models": models,
        "inputs": table(accounts["inputs"]),
        "pupils": table(accounts["pupils"]),
        "checks": accounts["checks"],
        "checks_table": table(accounts["checks"]),
        "cva_accounts": table(accounts["cva"]),
        "rejected": table(data.rejected),
        "suppression": table(data.suppression),
        "fingerprints": sorted(run.input_fingerprints.items()),
        "versions": sorted(run.table_versions.items()),
        "timings": [(stage, f"{seconds:.1f}") for stage, seconds in run.stage_timings.items()],
        "config": json.dumps(run.config, indent=2, sort_keys=True),
        "other_counts": json.dumps({k: v for k, v in run.row_counts.items() if k not in ("inputs", "pupil_results", "reconciliation", "cva")}, indent=2, sort_keys=True),
    }
    return _environment().get_template("report.html").render(**context)


def write_report(
    output_dir: Path, year: int, key_stage: str, data_stage: str, to: Path | None = None, run_id: str | None = None
) -> Path:
    """Write the report of a partition's last succeeded run (or of `run_id`) and return its path.

    Raises:
        RunNotFoundError: no such run, or none succeeded for the partition.
    """
    started = time.perf_counter()
    row = find_run(Path(output_dir), year, key_stage, data_stage, run_id)
    data = read_release(Path(output_dir), row)
    log.info("report data read in %.2f s", time.perf_counter() - started)
    html = build_report(data)
    path = Path(to) if to else default_report_path(output_dir, year, key_stage, data_stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    log.info("report of run %s written to %s (%.1f s, %d kB)", row["run_id"], path, time.perf_counter() - started, len(html) // 1024)
    return path
