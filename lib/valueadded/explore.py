"""Explore a release without Spark: one run's tables as pandas, and the drill-down from a
published figure to the pupils behind it (trust -> school -> pupils).

    release = open_release("output", 2024, "ks2", "validated")
    release.table("trust_measures")
    trust_schools(release, "T0001", "progress_maths")
    behind = pupils_behind(release, "progress_maths", school_id="100001")
    figure_from_pupils(behind, "progress_maths")   # == the school's score

Every table is read as the run published it (the Delta version it wrote, from the run
log), so later runs do not change what a notebook shows. The drill-down follows the
definitions in docs/tables.md (`pupil_measures`): a school's or subgroup's figure is the
mean of its pupils' values, a trust's the mean weighted by `trust_weight`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from valueadded.io.schemas import OUTPUT_TABLES, PARTITION_NAMES
from valueadded.io.snapshot import find_run, read_run_table
from valueadded.report.data import RunInfo


@dataclass(frozen=True)
class RunTables:
    """One run of a release, for reading: its run log row and its output folder."""

    output_dir: Path
    row: dict

    @property
    def run(self) -> RunInfo:
        return RunInfo.from_row(self.row)

    def table(self, name: str, columns: list[str] | None = None) -> pd.DataFrame:
        """The run's partition of table `name` as published, without the partition columns
        (unless asked for in `columns`)."""
        schema = OUTPUT_TABLES[name]
        wanted = columns or [c for c in schema.names if c not in PARTITION_NAMES]
        return read_run_table(self.output_dir, self.row, schema, wanted).to_pandas()

    def tables(self) -> pd.DataFrame:
        """The tables of the run: name, audience (published or restricted), Delta version, grain."""
        versions = self.run.table_versions
        return pd.DataFrame(
            [(name, OUTPUT_TABLES[name].audience, version, OUTPUT_TABLES[name].grain) for name, version in sorted(versions.items())],
            columns=["table", "audience", "version", "grain"],
        )


def open_release(output_dir: str | Path, year: int, key_stage: str, data_stage: str, run_id: str | None = None) -> RunTables:
    """The partition's last succeeded run (or `run_id`) in the release output `output_dir`."""
    return RunTables(Path(output_dir), find_run(Path(output_dir), year, key_stage, data_stage, run_id))


def trust_schools(release: RunTables, trust_id: str, measure: str) -> pd.DataFrame:
    """The trust's schools' published figures for `measure`, counted schools first, by rank."""
    schools = release.table(
        "school_measures",
        ["school_id", "measure", "in_trust_figure", "n", "score", "lower", "upper", "band", "trust_id", "trust_score",
         "rank_in_trust", "schools_ranked_in_trust", "suppressed", "suppression_reason"],
    )
    rows = schools[(schools.trust_id == trust_id) & (schools.measure == measure)]
    return rows.sort_values(["in_trust_figure", "rank_in_trust", "school_id"], ascending=[False, True, True]).reset_index(drop=True)


def pupils_behind(
    release: RunTables,
    measure: str,
    *,
    school_id: str | None = None,
    trust_id: str | None = None,
    subgroup: str | None = None,
    subgroup_value: str | None = None,
    with_pupil_results: bool = True,
) -> pd.DataFrame:
    """The pupils behind a figure: their `pupil_measures` rows (and `pupil_results` columns).

    Args:
        measure: the figure's measure (a `pupil_measures` column).
        school_id / trust_id: the school or the trust (counted schools' pupils, with their
            `trust_weight`); neither: the nation.
        subgroup, subgroup_value: a subgroup figure (e.g. "disadvantaged", "yes").
        with_pupil_results: add the pupils' `pupil_results` columns (joined on pupil_id).

    Restricted: the rows are pupil-level; never publish them.
    """
    if school_id is not None and trust_id is not None:
        raise ValueError("give a school or a trust, not both")
    values = release.table("pupil_measures")
    if measure not in values.columns:
        raise KeyError(f"{measure!r} is not a measure column of pupil_measures")
    keep = values[measure].notna()
    if school_id is not None:
        keep &= values.school_id == school_id
    if trust_id is not None:
        keep &= (values.trust_id == trust_id) & values.trust_weight.notna()
    if subgroup is not None:
        keep &= values[subgroup] == subgroup_value
    behind = values[keep].reset_index(drop=True)
    if with_pupil_results:
        results = release.table("pupil_results")
        behind = behind.merge(results.drop(columns=[c for c in behind.columns if c in results.columns and c != "pupil_id"]),
                              on="pupil_id", how="left", validate="one_to_one")
    return behind


def figure_from_pupils(pupils: pd.DataFrame, measure: str, weighted: bool = False) -> float:
    """The figure recomputed from its pupils: the mean of their values, or with `weighted`
    (a trust) the `trust_weight`-weighted mean."""
    values = pupils[measure].to_numpy(dtype=float)
    if not weighted:
        return float(values.mean())
    weights = pupils["trust_weight"].to_numpy(dtype=float)
    return float(np.sum(weights * values) / np.sum(weights))
