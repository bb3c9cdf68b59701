"""The KS4 year tables: `conf/reference/ks4/<year>.yaml` as a frozen, checked dataclass.

Every key is required and checked at load; a bad key or value is a `ConfigError` naming
the file and the key, so a release never runs on a half-read table. The keys are
documented in the YAML file itself and in docs/configuration.md ("KS4 measures").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from valueadded.config import ConfigError, check_keys, load_year_tables
from valueadded.io.validate import SCALED_SCORE_RANGE
from valueadded.measures.estimates import ProgressRules
from valueadded.measures.inclusion import NominalScores

# The Progress 8 elements and EBacc subject value added, in output order. The outcome
# behind each is fixed by the input contract (lib/valueadded/measures/ks4.py).
KS4_SUBJECTS = (
    "progress_8", "english", "maths", "ebacc", "open", "ebacc_science", "ebacc_humanities", "ebacc_languages",
)
YEAR_TABLE_KEYS = {
    "prior_attainment_step", "nominal_scores", "prior_attainment_groups", "estimate_method", "extreme_share",
    "divisors", "well_thresholds",
}
NOMINAL_KEYS = {"pscale", "pre_key_stage", "sat_without_scaled_score", "sat_without_scaled_score_ta"}


@dataclass(frozen=True)
class KS4YearTables:
    """One year's KS4 tables.

    Attributes:
        source: the file they were loaded from.
        prior_attainment_step: the KS2 mean is rounded down to a multiple of this.
        nominal_scores: nominal KS2 scores by code.
        prior_attainment_groups: (lowest, highest) prior attainment of group 1, 2, ...,
            both inclusive.
        estimate_method, extreme_share, divisors, well_thresholds: the progress rules.
    """

    source: str
    prior_attainment_step: float
    nominal_scores: NominalScores
    prior_attainment_groups: tuple[tuple[float, float], ...]
    estimate_method: str
    extreme_share: float
    divisors: dict[str, float]
    well_thresholds: dict[str, float]

    def progress_rules(self) -> ProgressRules:
        return ProgressRules(
            estimate_method=self.estimate_method,
            extreme_share=self.extreme_share,
            divisors=dict(self.divisors),
            well_thresholds=dict(self.well_thresholds),
        )


def _number(path: Path, key: str, value: Any, positive: bool = False) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or (positive and value <= 0):
        raise ConfigError(f"{path}: {key} must be a {'positive ' if positive else ''}number, got {value!r}")
    return float(value)


def _number_table(path: Path, key: str, value: Any, expected: set[str] | None = None, positive: bool = False) -> dict[str, float]:
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"{path}: {key} must map codes to numbers")
    if expected is not None and set(map(str, value)) != expected:
        unknown, missing = sorted(set(map(str, value)) - expected), sorted(expected - set(map(str, value)))
        raise ConfigError(f"{path}: {key}: unknown key(s) {unknown}, missing key(s) {missing}; expected {sorted(expected)}")
    return {str(code): _number(path, f"{key}.{code}", number, positive) for code, number in value.items()}


def _nominal_scores(path: Path, value: Any) -> NominalScores:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: nominal_scores must be a mapping")
    check_keys(path, value, NOMINAL_KEYS)
    tas = value["sat_without_scaled_score_ta"]
    if not isinstance(tas, list) or not tas:
        raise ConfigError(f"{path}: nominal_scores.sat_without_scaled_score_ta must be a non-empty list")
    return NominalScores(
        pscale=_number_table(path, "nominal_scores.pscale", value["pscale"]),
        pre_key_stage=_number_table(path, "nominal_scores.pre_key_stage", value["pre_key_stage"]),
        sat_without_scaled_score=_number(path, "nominal_scores.sat_without_scaled_score", value["sat_without_scaled_score"]),
        sat_without_scaled_score_ta=tuple(str(ta) for ta in tas),
    )


def _groups(path: Path, value: Any, step: float, lowest_score: float) -> tuple[tuple[float, float], ...]:
    """Check the ranges follow each other in steps and cover lowest_score to the top scaled score."""
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{path}: prior_attainment_groups must be a non-empty list of [lowest, highest] pairs")
    groups = []
    for number, pair in enumerate(value, start=1):
        if not isinstance(pair, list) or len(pair) != 2:
            raise ConfigError(f"{path}: prior_attainment_groups group {number} must be a [lowest, highest] pair, got {pair!r}")
        low, high = (_number(path, f"prior_attainment_groups group {number}", bound) for bound in pair)
        if high < low:
            raise ConfigError(f"{path}: prior_attainment_groups group {number}: highest {high:g} is below lowest {low:g}")
        if groups and low != groups[-1][1] + step:
            raise ConfigError(
                f"{path}: prior_attainment_groups group {number} starts at {low:g}; it must start one step "
                f"({step:g}) after group {number - 1} ends ({groups[-1][1]:g})"
            )
        groups.append((low, high))
    top = float(SCALED_SCORE_RANGE[1])
    if groups[0][0] > lowest_score or groups[-1][1] < top:
        raise ConfigError(
            f"{path}: prior_attainment_groups cover {groups[0][0]:g} to {groups[-1][1]:g}; they must cover "
            f"the lowest nominal score {lowest_score:g} to the top scaled score {top:g}"
        )
    return tuple(groups)


def parse_ks4_tables(path: Path, content: dict[str, Any]) -> KS4YearTables:
    """Check a year file's mapping and build the tables; ConfigError names the file and key."""
    check_keys(path, content, YEAR_TABLE_KEYS)
    step = _number(path, "prior_attainment_step", content["prior_attainment_step"], positive=True)
    nominal = _nominal_scores(path, content["nominal_scores"])
    method = content["estimate_method"]
    if method not in ("mean", "median"):
        raise ConfigError(f"{path}: estimate_method must be mean or median, got {method!r}")
    share = _number(path, "extreme_share", content["extreme_share"])
    if not 0 <= share < 1:
        raise ConfigError(f"{path}: extreme_share must be from 0 to below 1, got {share!r}")
    return KS4YearTables(
        source=str(path),
        prior_attainment_step=step,
        nominal_scores=nominal,
        prior_attainment_groups=_groups(path, content["prior_attainment_groups"], step, nominal.lowest()),
        estimate_method=method,
        extreme_share=share,
        divisors=_number_table(path, "divisors", content["divisors"], set(KS4_SUBJECTS), positive=True),
        well_thresholds=_number_table(path, "well_thresholds", content["well_thresholds"], set(KS4_SUBJECTS), positive=True),
    )


def load_ks4_tables(year: int) -> KS4YearTables:
    """The KS4 tables of a year, from conf/reference/ks4/<year>.yaml."""
    path, content = load_year_tables("ks4", year)
    return parse_ks4_tables(path, content)
