"""What the release report reads: one run's partition of the output tables, as pandas.

Every table is read as of the Delta version the run wrote (`restricted/runs` records it),
so a report describes exactly one run, whatever has been released since. Only the
columns the report needs are read. School and trust figures come from the published
tables and only their shown values are kept (a withheld figure never reaches a chart);
national figures, the CVA model and the run log are shown as they are. The one
pupil-level table read, `pupil_progress`, is reduced here to national histograms and
summary statistics (`summaries.progress_distribution`): no pupil row leaves this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from valueadded.io.schemas import (
    CVA_MODEL,
    IDENTIFIED_SCHOOLS,
    NATIONAL_MEASURES,
    OUTPUT_TABLES,
    PARTITION_NAMES,
    PUBLISHED_NATIONAL_ESTIMATES,
    PUBLISHED_SCHOOL_MEASURES,
    PUPIL_PROGRESS,
    REJECTED_ROWS,
    TRUST_MEASURES,
)
from valueadded.io.snapshot import read_run_table
from valueadded.report.summaries import ProgressDistribution, progress_distribution

SCHOOL_COLUMNS = [
    "school_id", "measure", "n", "score", "lower", "upper", "band", "national_score", "trust_id", "in_trust_figure",
    "quadrant", "quadrant_attainment_measure", "suppressed",
]
TRUST_COLUMNS = [
    "trust_id", "trust_name", "measure", "eligible", "schools_in_trust", "schools_counted", "n", "score", "lower",
    "upper", "band", "national_score", "suppressed",
]
NATIONAL_COLUMNS = ["measure", "schools", "n", "score", "lower", "upper", "suppressed"]
ESTIMATE_COLUMNS = [
    "subject", "prior_attainment_group", "source", "n", "estimate", "outcome_sd", "progress_sd", "cap", "suppressed",
]
PUBLISHED_WITH_SUPPRESSION = tuple(
    schema for schema in OUTPUT_TABLES.values() if schema.audience == "published" and "suppressed" in schema.names
)


@dataclass(frozen=True)
class RunInfo:
    """The run log row of the run a report describes, its JSON columns parsed."""

    run_id: str
    year: int
    key_stage: str
    data_stage: str
    command: str
    code_version: str
    status: str
    started_at: object
    finished_at: object
    config: dict
    input_fingerprints: dict
    row_counts: dict
    stage_timings: dict
    table_versions: dict

    @classmethod
    def from_row(cls, row: dict) -> "RunInfo":
        return cls(
            run_id=row["run_id"], year=int(row["academic_year"]), key_stage=row["key_stage"],
            data_stage=row["data_stage"], command=row["command"], code_version=row["code_version"],
            status=row["status"], started_at=row["started_at"], finished_at=row["finished_at"],
            config=json.loads(row["config_json"]), input_fingerprints=json.loads(row["input_fingerprints_json"]),
            row_counts=json.loads(row["row_counts_json"]), stage_timings=json.loads(row["stage_timings_json"]),
            table_versions=json.loads(row["table_versions_json"]),
        )


@dataclass(frozen=True)
class ReleaseData:
    """Everything a report shows about one run (see the module docstring for what is kept).

    Attributes:
        run: the run log row.
        national_estimates: published national_estimates, one row per subject and group.
        progress: per subject, the national distribution of pupils' adjusted progress.
        schools: published school_measures, shown rows only (suppressed ones dropped).
        trusts: published trust_measures, eligible trusts' shown rows only.
        national: published national_measures.
        cva_model: published cva_model.
        rejected: rejected input rows counted by source table and reason code.
        suppression: per published table: rows, shown, and withheld rows per reason.
        identified_schools: schools identified this year (published identified_schools).
    """

    run: RunInfo
    national_estimates: pd.DataFrame
    progress: dict[str, ProgressDistribution]
    schools: pd.DataFrame
    trusts: pd.DataFrame
    national: pd.DataFrame
    cva_model: pd.DataFrame
    rejected: pd.DataFrame
    suppression: pd.DataFrame
    identified_schools: int


def _shown(table: pa.Table) -> pd.DataFrame:
    return table.filter(pc.invert(table["suppressed"])).to_pandas()


def suppression_counts(output_dir: Path, row: dict) -> pd.DataFrame:
    """One row per published table: rows, shown, and withheld rows per suppression reason."""
    records = []
    for schema in PUBLISHED_WITH_SUPPRESSION:
        table = read_run_table(output_dir, row, schema, ["suppressed", "suppression_reason"]).to_pandas()
        reasons = table.loc[table.suppressed, "suppression_reason"].value_counts()
        records.append({
            "table": schema.name, "rows": len(table), "shown": int((~table.suppressed).sum()),
            "below_minimum_pupils": int(reasons.get("below_minimum_pupils", 0)), "secondary": int(reasons.get("secondary", 0)),
        })
    return pd.DataFrame.from_records(records, columns=["table", "rows", "shown", "below_minimum_pupils", "secondary"])


def read_release(output_dir: Path, row: dict) -> ReleaseData:
    """Read what the report shows of the run `row` (a run log row) from `output_dir`."""
    output_dir = Path(output_dir)
    read = lambda schema, columns=None: read_run_table(output_dir, row, schema, columns)  # noqa: E731
    progress = read(PUPIL_PROGRESS, ["subject", "adjusted_progress", "capped"])
    trusts = _shown(read(TRUST_MEASURES, TRUST_COLUMNS))
    rejected = read(REJECTED_ROWS, ["source_table", "reason_code"]).to_pandas()
    identified = read(IDENTIFIED_SCHOOLS, ["identified"])
    return ReleaseData(
        run=RunInfo.from_row(row),
        national_estimates=read(PUBLISHED_NATIONAL_ESTIMATES, ESTIMATE_COLUMNS).to_pandas(),
        progress=progress_distribution(progress),
        schools=_shown(read(PUBLISHED_SCHOOL_MEASURES, SCHOOL_COLUMNS)),
        trusts=trusts[trusts.eligible].reset_index(drop=True),
        national=read(NATIONAL_MEASURES, NATIONAL_COLUMNS).to_pandas(),
        cva_model=read(CVA_MODEL, [c for c in CVA_MODEL.names if c not in PARTITION_NAMES]).to_pandas(),
        rejected=rejected.groupby(["source_table", "reason_code"]).size().rename("rows").reset_index(),
        suppression=suppression_counts(output_dir, row),
        identified_schools=int(pc.sum(identified["identified"]).as_py() or 0),
    )
