"""The run log: one row per release run in the `runs` table, succeeded or failed."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import pyarrow as pa

from valueadded.io.schemas import RUNS


def code_version() -> str:
    """Package version plus the git commit of the checkout, when there is one."""
    try:
        version = metadata.version("valueadded")
    except metadata.PackageNotFoundError:
        version = "unknown"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        commit += "-dirty" if dirty else ""
    except (OSError, subprocess.SubprocessError):
        commit = "no-git"
    return f"{version}+{commit}"


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class RunRecord:
    """What one run did, filled in stage by stage and appended to `runs` at the end."""

    run_id: str
    command: str
    year: int
    key_stage: str
    data_stage: str
    config_json: str
    pseudonym_key_fingerprint: str
    started_at: datetime = field(default_factory=utc_now)
    input_fingerprints: dict[str, str] = field(default_factory=dict)
    row_counts: dict = field(default_factory=dict)
    stage_timings: dict[str, float] = field(default_factory=dict)
    table_versions: dict[str, int] = field(default_factory=dict)

    def to_arrow(self, status: str, error: str | None = None) -> pa.Table:
        row = {
            "academic_year": self.year,
            "key_stage": self.key_stage,
            "data_stage": self.data_stage,
            "run_id": self.run_id,
            "command": self.command,
            "config_json": self.config_json,
            "input_fingerprints_json": json.dumps(self.input_fingerprints, sort_keys=True),
            "pseudonym_key_fingerprint": self.pseudonym_key_fingerprint,
            "code_version": code_version(),
            "started_at": self.started_at,
            "finished_at": utc_now(),
            "status": status,
            "error": error,
            "row_counts_json": json.dumps(self.row_counts, sort_keys=True),
            "stage_timings_json": json.dumps({k: round(v, 3) for k, v in self.stage_timings.items()}),
            "table_versions_json": json.dumps(self.table_versions, sort_keys=True),
        }
        return pa.Table.from_pylist([row], schema=RUNS.arrow_schema())
