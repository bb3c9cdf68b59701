"""A small, valid input set built in code, for rule tests to break one row at a time.

Three schools (two state-funded primaries in a trust, one independent), one secondary,
eight KS2 pupils and four KS4 pupils. `valid_tables()` returns plain lists of dicts per
input table; a test edits them and writes them with `write_inputs`.
"""

from __future__ import annotations

import copy
import csv
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from valueadded.io.schemas import INPUT_TABLES

YEAR = 2024


def _school(school_id, phase, sector="state_funded", provision="mainstream"):
    return {
        "school_id": school_id, "school_name": f"School {school_id}", "phase": phase, "provision": provision,
        "sector": sector, "la_code": "201", "la_name": "City of London", "region_code": "E12000007", "region_name": "London",
    }


def _pupil(pupil_id, key_stage, school_id, **overrides):
    born = date(YEAR - 11, 10, 15) if key_stage == "ks2" else date(YEAR - 16, 10, 15)
    row = {
        "pupil_id": pupil_id, "key_stage": key_stage, "school_id": school_id, "gender": "F",
        "date_of_birth": born, "sen": "N", "ethnicity": "WBRI", "fsm": False, "disadvantaged": False,
        "eal": False, "mobile": False, "ever_in_care": False, "idaci": 0.12,
        "arrived_from_overseas": False, "country_english_official": None,
        "first_admission_date": date(born.year + 4, 9, 1),
    }
    row.update(overrides)
    return row


def _ks2(pupil_id, **overrides):
    row = {
        "pupil_id": pupil_id, "ks1_reading": "EXS", "ks1_writing": "EXS", "ks1_maths": "GDS",
        "reading_scaled_score": 104, "reading_test_code": "S", "reading_ta": None, "reading_pscale": None,
        "maths_scaled_score": 101, "maths_test_code": "S", "maths_ta": None, "maths_pscale": None,
        "writing_ta": "EXS", "writing_pscale": None,
    }
    row.update(overrides)
    return row


def _ks4(pupil_id, **overrides):
    row = {
        "pupil_id": pupil_id,
        "ks2_reading_scaled_score": 105, "ks2_reading_test_code": "S", "ks2_reading_ta": None, "ks2_reading_pscale": None,
        "ks2_maths_scaled_score": 106, "ks2_maths_test_code": "S", "ks2_maths_ta": None, "ks2_maths_pscale": None,
        "english_points": 6.0, "maths_points": 5.0, "ebacc_1_points": 5.0, "ebacc_2_points": 4.0, "ebacc_3_points": 0.0,
        "open_1_points": 6.0, "open_2_points": 5.0, "open_3_points": 4.0,
        "science_points": 5.0, "humanities_points": None, "languages_points": None,
    }
    row.update(overrides)
    return row


def add_ks2_pupil(tables: dict, pupil_id: str, school_id: str = "100001", pupil: dict | None = None, results: dict | None = None) -> None:
    """Append one valid KS2 pupil (pupil row and results row), with overrides."""
    tables["pupils"].append(_pupil(pupil_id, "ks2", school_id, **(pupil or {})))
    tables["ks2_results"].append(_ks2(pupil_id, **(results or {})))


def add_ks4_pupil(tables: dict, pupil_id: str, school_id: str = "200001", pupil: dict | None = None, results: dict | None = None) -> None:
    """Append one valid KS4 pupil (pupil row and results row), with overrides."""
    tables["pupils"].append(_pupil(pupil_id, "ks4", school_id, **(pupil or {})))
    tables["ks4_results"].append(_ks4(pupil_id, **(results or {})))


def valid_tables() -> dict[str, list[dict]]:
    ks2_schools = ["100001", "100002", "100003"]
    ks2_pupils = [f"P2{i:03d}" for i in range(8)]
    ks4_pupils = [f"P4{i:03d}" for i in range(4)]
    tables = {
        "schools": [
            _school("100001", "primary"), _school("100002", "primary"),
            _school("100003", "primary", sector="independent"), _school("200001", "secondary"),
        ],
        "trust_membership": [
            {"school_id": "100001", "trust_id": "T1", "trust_name": "Trust One", "join_date": date(2015, 9, 1), "leave_date": None},
            {"school_id": "100002", "trust_id": "T1", "trust_name": "Trust One", "join_date": date(2019, 4, 1), "leave_date": None},
        ],
        "pupils": [
            *[_pupil(p, "ks2", ks2_schools[i % 3]) for i, p in enumerate(ks2_pupils)],
            *[_pupil(p, "ks4", "200001") for p in ks4_pupils],
        ],
        "ks2_results": [_ks2(p) for p in ks2_pupils],
        "ks4_results": [_ks4(p) for p in ks4_pupils],
        "amendments": [
            {"pupil_id": "P2007", "key_stage": "ks2", "action": "correct", "field": "reading_scaled_score", "new_value": "99", "reason": "marking review"},
        ],
    }
    return copy.deepcopy(tables)


def write_inputs(folder: Path, tables: dict[str, list[dict]], formats: dict[str, str] | None = None) -> Path:
    """Write each table as Parquet (default) or CSV, with the contract's exact types."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in tables.items():
        # Files in the wild rarely carry non-null flags; tests must be able to write nulls.
        schema = pa.schema([field.with_nullable(True) for field in INPUT_TABLES[name].arrow_schema()])
        fmt = (formats or {}).get(name, "parquet")
        if fmt == "parquet":
            pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / f"{name}.parquet")
        else:
            with (folder / f"{name}.csv").open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=schema.names)
                writer.writeheader()
                for row in rows:
                    writer.writerow({k: ("" if v is None else str(v).lower() if isinstance(v, bool) else v) for k, v in row.items()})
    return folder
