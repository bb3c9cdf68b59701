"""Published national estimates: a table a release applies instead of computing estimates.

A published table is a folder `conf/reference/published/<name>/` holding the publisher's
CSV files unchanged and an `estimates.yaml` saying which file and column holds each
subject's per-group estimate and national SD (see the dfe-ks4-2024 folder). It is read
on the driver (a few hundred numbers) and checked here: an unreadable file, a missing
column, a group without a number or a group range that differs from the year's groups
is a `ConfigError` naming the file, so a release never applies half a table.
"""

from __future__ import annotations

import pandas as pd

import csv
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from valueadded.config import REPO_CONF_DIR, ConfigError, ReleaseConfig, check_keys, read_yaml

PUBLISHED_DIR = REPO_CONF_DIR / "reference" / "published"
MANIFEST = "estimates.yaml"
SOURCE_PREFIX = "published:"
RANGE_SEPARATOR = " to "


@dataclass(frozen=True)
class PublishedEstimates:
    """One published table.

    Attributes:
        name: the folder name, e.g. dfe-ks4-2024.
        key_stage: the key stage it is for.
        estimates: (subject, prior attainment group) -> estimate.
        national_sds: subject -> national pupil-level SD of progress.
        ranges: group -> (lowest, highest) prior attainment, where the files give them.
    """

    name: str
    key_stage: str
    estimates: dict[tuple[str, int], float]
    national_sds: dict[str, float]
    ranges: dict[int, tuple[float, float]]

    @property
    def source(self) -> str:
        return SOURCE_PREFIX + self.name

    @property
    def subjects(self) -> set[str]:
        return {subject for subject, _ in self.estimates}


def published_dir(name: str) -> Path:
    return PUBLISHED_DIR / name


def _read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV with trimmed header names; rows with an empty first field are skipped."""
    if not path.is_file():
        raise ConfigError(f"{path}: published estimates file not found")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [name.strip() for name in next(reader, [])]
        # DfE's files end with blank rows and, in some, a key to their column numbers.
        return [dict(zip(header, (value.strip() for value in row))) for row in reader if row and row[0].strip()]


def _column(path: Path, rows: list[dict[str, str]], column: str) -> None:
    if rows and column not in rows[0]:
        raise ConfigError(f"{path}: no column {column!r}; columns are {sorted(rows[0])}")


def _float(path: Path, column: str, row_number: int, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"{path}: column {column!r} row {row_number}: {value!r} is not a number") from None


def _range(path: Path, row_number: int, value: str) -> tuple[float, float]:
    low, separator, high = value.partition(RANGE_SEPARATOR)
    if not separator:
        raise ConfigError(f"{path}: row {row_number}: group range {value!r} is not 'LOW{RANGE_SEPARATOR}HIGH'")
    return _float(path, "range", row_number, low), _float(path, "range", row_number, high)


def _subject_map(path: Path, key: str, value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"{path}: {key}.subjects must map subjects to column names")
    return {str(subject): str(column).strip() for subject, column in value.items()}


def _file_specs(path: Path, content: dict[str, Any], key: str, keys: set[str]) -> list[dict[str, Any]]:
    specs = content[key]
    if not isinstance(specs, list) or not specs:
        raise ConfigError(f"{path}: {key} must be a non-empty list of files")
    for spec in specs:
        if not isinstance(spec, dict):
            raise ConfigError(f"{path}: each {key} entry must be a mapping")
        check_keys(path, spec, keys)
    return specs


def _read_estimates(folder: Path, manifest: Path, spec: dict[str, Any], out: PublishedEstimates) -> None:
    path = folder / str(spec["file"])
    rows = _read_csv(path)
    subjects = _subject_map(manifest, "estimates", spec["subjects"])
    for column in [spec["group"], *([spec["ranges"]] if spec["ranges"] else []), *subjects.values()]:
        _column(path, rows, str(column))
    for row_number, row in enumerate(rows, start=2):
        group = int(_float(path, spec["group"], row_number, row[spec["group"]]))
        if spec["ranges"]:
            found = _range(path, row_number, row[spec["ranges"]])
            if out.ranges.setdefault(group, found) != found:
                raise ConfigError(f"{path}: group {group} range {found} differs from another file's {out.ranges[group]}")
        for subject, column in subjects.items():
            if (subject, group) in out.estimates:
                raise ConfigError(f"{path}: a second estimate for {subject} group {group}")
            out.estimates[(subject, group)] = _float(path, column, row_number, row[column])


def _read_sds(folder: Path, manifest: Path, spec: dict[str, Any], out: PublishedEstimates) -> None:
    path = folder / str(spec["file"])
    rows = _read_csv(path)
    if len(rows) != 1:
        raise ConfigError(f"{path}: expected one row of standard deviations, found {len(rows)}")
    for subject, column in _subject_map(manifest, "standard_deviations", spec["subjects"]).items():
        _column(path, rows, column)
        out.national_sds[subject] = _float(path, column, 2, rows[0][column])


def load_published_estimates(name: str) -> PublishedEstimates:
    """Read and check the published table `name` (a folder in conf/reference/published/)."""
    folder = published_dir(name)
    manifest = folder / MANIFEST
    if not folder.is_dir():
        available = sorted(p.name for p in PUBLISHED_DIR.iterdir() if p.is_dir()) if PUBLISHED_DIR.is_dir() else []
        raise ConfigError(f"{folder}: no published estimates table {name!r}; available: {available}")
    content = read_yaml(manifest)
    check_keys(manifest, content, {"key_stage", "estimates", "standard_deviations"})
    table = PublishedEstimates(name=name, key_stage=str(content["key_stage"]), estimates={}, national_sds={}, ranges={})
    for spec in _file_specs(manifest, content, "estimates", {"file", "group", "ranges", "subjects"}):
        _read_estimates(folder, manifest, spec, table)
    for spec in _file_specs(manifest, content, "standard_deviations", {"file", "subjects"}):
        _read_sds(folder, manifest, spec, table)
    groups = sorted({group for _, group in table.estimates})
    for subject in sorted(table.subjects):
        missing = [g for g in groups if (subject, g) not in table.estimates]
        if missing:
            raise ConfigError(f"{manifest}: {subject} has no estimate for group(s) {missing}")
        if subject not in table.national_sds:
            raise ConfigError(f"{manifest}: {subject} has estimates but no standard deviation")
    return table


def check_applies(table: PublishedEstimates, key_stage: str, subjects: tuple[str, ...], groups: tuple[tuple[float, float], ...], year_source: str) -> None:
    """Raise ConfigError unless the table is for this key stage, subjects and group ranges.

    Args:
        groups: the year's (lowest, highest) prior attainment per group 1, 2, ...
        year_source: the year tables' file, named in the error.
    """
    where = published_dir(table.name) / MANIFEST
    if table.key_stage != key_stage:
        raise ConfigError(f"{where}: table {table.name!r} is for {table.key_stage}, not {key_stage}")
    missing = sorted(set(subjects) - table.subjects)
    if missing:
        raise ConfigError(f"{where}: table {table.name!r} has no estimates for {missing}")
    expected = {number: bounds for number, bounds in enumerate(groups, start=1)}
    found_groups = {group for _, group in table.estimates}
    if found_groups != set(expected):
        raise ConfigError(f"{where}: table {table.name!r} has groups {sorted(found_groups)}; {year_source} has 1 to {len(groups)}")
    differ = {g: (table.ranges[g], expected[g]) for g in sorted(table.ranges) if table.ranges[g] != expected[g]}
    if differ:
        raise ConfigError(f"{where}: group ranges of {table.name!r} differ from {year_source} (published, configured): {differ}")


def estimates_table(table: PublishedEstimates, subjects: tuple[str, ...]) -> pd.DataFrame:
    """One row per (subject, group): subject, prior_attainment_group, estimate, national_sd."""
    rows = [
        (subject, group, float(estimate), float(table.national_sds[subject]))
        for (subject, group), estimate in sorted(table.estimates.items())
        if subject in subjects
    ]
    return pd.DataFrame(rows, columns=["subject", "prior_attainment_group", "estimate", "national_sd"])


def with_published_estimates(config: ReleaseConfig, name: str) -> ReleaseConfig:
    """The release configuration with table `name` applied to the key stage it is for.

    Used by `valueadded release --published-estimates NAME`; the key stage comes from the
    table's own estimates.yaml, so one option serves either key stage.
    """
    table = load_published_estimates(name)
    if table.key_stage not in config.published_estimates:
        raise ConfigError(f"{published_dir(name) / MANIFEST}: unknown key stage {table.key_stage!r}")
    return dataclasses.replace(config, published_estimates={**config.published_estimates, table.key_stage: name})
