"""Reproduce an earlier release exactly: every table as the run published it.

The run log (`restricted/runs`) records, for each run, the Delta version of every table
it wrote. `export_run` reads each of those tables at that version, keeps the run's own
partition (academic year, key stage, data stage) and writes it as one Parquet file per
table, with a manifest (including the fingerprint of the pupil pseudonym key, so that a
reproduction can be checked to use the same key). Later runs, re-runs and roll-backs do
not change what it returns: Delta keeps every version (the engine never vacuums).

    valueadded snapshot --output OUTPUT --run RUN_ID --to DIR
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.parquet as pq
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from valueadded.config import ConfigError
from valueadded.io.schemas import OUTPUT_TABLES, RUNS


class RunNotFoundError(ConfigError):
    """The run is not in the run log, or did not publish anything."""


def run_row(output_dir: Path, run_id: str) -> dict:
    """The run log row of `run_id`."""
    path = Path(output_dir) / RUNS.audience / RUNS.name
    try:
        runs = DeltaTable(str(path)).to_pyarrow_table(columns=[c.name for c in RUNS.columns]).to_pylist()
    except TableNotFoundError:
        raise RunNotFoundError(f"{path}: no run log here (is --output the release's output folder?)") from None
    matches = [row for row in runs if row["run_id"] == run_id]
    if not matches:
        raise RunNotFoundError(f"{path}: no run {run_id!r}")
    return matches[0]


def export_run(output_dir: Path, run_id: str, destination: Path) -> dict[str, int]:
    """Write every table of run `run_id`'s partition, as published, to `destination`.

    Returns table -> rows written. Raises RunNotFoundError for an unknown run or one that
    failed (a failed run published nothing).
    """
    row = run_row(output_dir, run_id)
    if row["status"] != "succeeded":
        raise RunNotFoundError(f"run {run_id} {row['status']}: it published nothing ({row['error']})")
    partition = (row["academic_year"], row["key_stage"], row["data_stage"])
    filters = [(name, "=", str(value)) for name, value in zip(("academic_year", "key_stage", "data_stage"), partition)]
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    rows = {}
    versions = json.loads(row["table_versions_json"])
    for name, version in sorted(versions.items()):
        schema = OUTPUT_TABLES[name]
        table = DeltaTable(str(Path(output_dir) / schema.audience / name), version=version).to_pyarrow_table(partitions=filters)
        pq.write_table(table.select(schema.names), destination / f"{name}.parquet")
        rows[name] = table.num_rows
    manifest = {
        "run_id": run_id, "partition": list(partition), "table_versions": versions, "rows": rows,
        "code_version": row["code_version"], "input_fingerprints": json.loads(row["input_fingerprints_json"]),
        "pseudonym_key_fingerprint": row["pseudonym_key_fingerprint"],
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (destination / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return rows
