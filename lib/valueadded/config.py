"""Typed, frozen configuration loaded from `conf/`.

A release configuration (`conf/releases/*.yaml`) names the run settings and points at
the reference tables (`conf/reference/*.yaml`): the code lists of the input contract
and, per year, the tables the measures use. Loading validates every key: an unknown
key, a missing key or a value of the wrong kind is a `ConfigError` naming the file and
the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from valueadded.rollup.config import RollupConfig

REPO_CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
DEFAULT_RELEASE_CONFIG = REPO_CONF_DIR / "releases" / "default.yaml"


CVA_EMPTY_TERMS = ("stop", "drop")


class ConfigError(ValueError):
    """A configuration file is missing, unreadable or has a bad key or value."""


@dataclass(frozen=True)
class CodeLists:
    """Valid values of the coded input columns (see docs/inputs.md)."""

    key_stages: tuple[str, ...]
    phases: tuple[str, ...]
    provisions: tuple[str, ...]
    sectors: tuple[str, ...]
    regions: tuple[str, ...]
    genders: tuple[str, ...]
    sen: tuple[str, ...]
    ethnicities: tuple[str, ...]
    ks1_ta: tuple[str, ...]
    ks2_test_codes: tuple[str, ...]
    ks2_test_ta: tuple[str, ...]
    ks2_writing_ta: tuple[str, ...]
    pscales: tuple[str, ...]
    amendment_actions: tuple[str, ...]
    correctable: dict[str, tuple[str, ...]]


@dataclass(frozen=True)
class ReleaseConfig:
    """Settings of one release run."""

    max_rejected_share: float
    shuffle_partitions: int
    codes: CodeLists
    source: str  # the file this configuration was loaded from
    # Key stage -> name of a published national estimates table in
    # conf/reference/published/ to apply instead of computing estimates (None: compute).
    published_estimates: dict[str, str | None] = None  # type: ignore[assignment]
    # A CVA design column no pupil of the model's population has (an empty category or
    # interaction cell): "stop" the release naming it, or "drop" it from the fit and
    # report it in cva_model. Collinear terms that pupils do have always stop.
    cva_empty_terms: str = "stop"
    # Roll-up settings (conf/rollup/*.yaml): trusts, subgroups, suppression,
    # identification, comparisons and trends.
    rollup: RollupConfig | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, default=list)


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: configuration file not found")
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values")
    return content


def check_keys(path: Path, content: dict[str, Any], expected: set[str]) -> None:
    """Raise ConfigError naming the file for any unknown or missing key."""
    unknown = sorted(set(content) - expected)
    missing = sorted(expected - set(content))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; expected {sorted(expected)}")
    if missing:
        raise ConfigError(f"{path}: missing key(s) {missing}")


def _string_list(path: Path, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{path}: {key} must be a non-empty list")
    return tuple(str(v) for v in value)


def load_code_lists(path: Path) -> CodeLists:
    content = read_yaml(path)
    names = {f.name for f in fields(CodeLists)}
    check_keys(path, content, names)
    values: dict[str, Any] = {}
    for name in names - {"correctable"}:
        values[name] = _string_list(path, name, content[name])
    correctable = content["correctable"]
    if not isinstance(correctable, dict):
        raise ConfigError(f"{path}: correctable must map key stage to a list of columns")
    values["correctable"] = {
        key_stage: _string_list(path, f"correctable.{key_stage}", columns)
        for key_stage, columns in correctable.items()
    }
    return CodeLists(**values)


def load_release_config(path: str | Path | None = None) -> ReleaseConfig:
    """Load and validate a release configuration (default: conf/releases/default.yaml)."""
    path = Path(path) if path is not None else DEFAULT_RELEASE_CONFIG
    content = read_yaml(path)
    check_keys(path, content, {"max_rejected_share", "shuffle_partitions", "reference", "published_estimates", "cva_empty_terms", "rollup"})
    share = content["max_rejected_share"]
    if not isinstance(share, (int, float)) or isinstance(share, bool) or not 0 <= share <= 1:
        raise ConfigError(f"{path}: max_rejected_share must be a number from 0 to 1, got {share!r}")
    partitions = content["shuffle_partitions"]
    if not isinstance(partitions, int) or isinstance(partitions, bool) or partitions < 1:
        raise ConfigError(f"{path}: shuffle_partitions must be a positive integer, got {partitions!r}")
    codes = load_code_lists((path.parent / str(content["reference"])).resolve())
    published = content["published_estimates"] or {}
    if not isinstance(published, dict) or set(published) - set(codes.key_stages):
        raise ConfigError(f"{path}: published_estimates must map key stages {list(codes.key_stages)} to a table name or null")
    for key_stage, name in published.items():
        if name is not None and not (REPO_CONF_DIR / "reference" / "published" / str(name)).is_dir():
            raise ConfigError(f"{path}: published_estimates.{key_stage}: no table {name!r} in {REPO_CONF_DIR / 'reference' / 'published'}")
    empty_terms = content["cva_empty_terms"]
    if empty_terms not in CVA_EMPTY_TERMS:
        raise ConfigError(f"{path}: cva_empty_terms must be one of {list(CVA_EMPTY_TERMS)}, got {empty_terms!r}")
    from valueadded.rollup.config import load_rollup_config  # here: it imports this module

    rollup = load_rollup_config((path.parent / str(content["rollup"])).resolve(), codes.key_stages, codes.ethnicities)
    return ReleaseConfig(
        max_rejected_share=float(share),
        shuffle_partitions=partitions,
        codes=codes,
        source=str(path.resolve()),
        published_estimates={key_stage: published.get(key_stage) for key_stage in codes.key_stages},
        cva_empty_terms=empty_terms,
        rollup=rollup,
    )


def load_year_tables(key_stage: str, year: int) -> tuple[Path, dict[str, Any]]:
    """The year's reference tables for a key stage: conf/reference/<key_stage>/<year>.yaml.

    Each key stage's measures module turns the mapping into its own frozen dataclass
    (and checks its keys with `check_keys`).
    """
    path = REPO_CONF_DIR / "reference" / key_stage / f"{year}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"{path}: no {key_stage} reference tables for {year}; years available: {available}")
    return path, read_yaml(path)
