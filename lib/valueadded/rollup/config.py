"""The roll-up settings (`conf/rollup/*.yaml`) as frozen, checked dataclasses.

Named by the release configuration's `rollup` key. Every key is required and checked at
load: an unknown or missing key, a value of the wrong kind, a measure or subgroup value
that does not exist, or an ethnicity code missing from (or repeated in) the major groups
is a `ConfigError` naming the file and the key. The keys are documented in the default
file itself and in docs/configuration.md ("Roll-ups").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from valueadded.config import ConfigError, check_keys, read_yaml
from valueadded.rollup.measures import ATTAINMENT, CVA, MEASURES, PROGRESS

# Subgroup dimensions: pupil_measures column -> its values. ethnic_group's values are the
# major groups of the configuration.
YES, NO = "yes", "no"
FIXED_DIMENSION_VALUES: dict[str, tuple[str, ...]] = {
    "disadvantaged": (YES, NO),
    "fsm": (YES, NO),
    "sen": ("none", "support", "plan"),
    "eal": (YES, NO),
    "gender": ("female", "male"),
    "prior_attainment_band": ("low", "middle", "high", "none"),
    "high_needs": (YES, NO),
}
ETHNIC_GROUP = "ethnic_group"
DIMENSIONS = ("disadvantaged", "fsm", "sen", "eal", "gender", ETHNIC_GROUP, "prior_attainment_band", "high_needs")
HISTORY_DATA_STAGES = ("validated", "unvalidated")

TOP_KEYS = {"suppression", "trusts", "subgroups", "identification", "comparisons", "trends"}


@dataclass(frozen=True)
class TrustRules:
    """Which schools count towards a trust's figures, and with what weight.

    Attributes:
        min_full_years: full academic years in the trust a school needs to count (3).
        min_schools: counted schools (with pupils in the measure) a trust needs (3).
        time_in_trust_weights: (from full years, weight) pairs, ascending; a school with
            k full years takes the weight of the last pair whose years are <= k. The first
            pair starts at min_full_years.
    """

    min_full_years: int
    min_schools: int
    time_in_trust_weights: tuple[tuple[int, float], ...]

    def weight(self, full_years: int) -> float | None:
        """The weight of a school with `full_years` full years in its trust (None: not counted)."""
        found = None
        for years, weight in self.time_in_trust_weights:
            if full_years >= years:
                found = weight
        return found


@dataclass(frozen=True)
class SubgroupRules:
    """The pupil subgroups.

    Attributes:
        dimensions: subgroup dimensions published, in order (names of DIMENSIONS).
        measures: key stage -> the measures broken down by subgroup.
        ethnic_groups: major group -> the ethnicity codes in it (every code exactly once).
        prior_attainment_bands: key stage -> (middle_from, high_from), inclusive lower
            bounds of the middle and high bands on the key stage's prior attainment scale.
    """

    dimensions: tuple[str, ...]
    measures: dict[str, tuple[str, ...]]
    ethnic_groups: dict[str, tuple[str, ...]]
    prior_attainment_bands: dict[str, tuple[float, float]]

    def values(self, dimension: str) -> tuple[str, ...]:
        if dimension == ETHNIC_GROUP:
            return tuple(self.ethnic_groups)
        return FIXED_DIMENSION_VALUES[dimension]


@dataclass(frozen=True)
class IdentificationRules:
    """Identifying schools with a low-performing subgroup (seed 003).

    Attributes:
        measure: key stage -> the measure subgroups are compared on.
        lowest_percent: a subgroup is identified when its percentile (100 x rank / number
            of eligible subgroups, rank 1 = lowest score) is at most this (10).
        exit_above_percent: a school identified last year exits when the subgroup's
            percentile is above this (20).
        min_pupils: pupils an eligible subgroup needs (at least the suppression minimum).
        subgroups: dimension -> the values that are eligible subgroups.
    """

    measure: dict[str, str]
    lowest_percent: float
    exit_above_percent: float
    min_pupils: int
    subgroups: dict[str, tuple[str, ...]]


@dataclass(frozen=True)
class SimilarSchools:
    """Similar schools: same phase and provision, same cohort size band and disadvantage band.

    Attributes:
        cohort_size_lower_bounds: key stage -> inclusive lower bounds of the size bands
            (included pupils in the key stage cohort), ascending.
        disadvantaged_percent_lower_bounds: inclusive lower bounds of the bands of the
            percentage of the cohort's included pupils who are disadvantaged, ascending
            from 0.
    """

    cohort_size_lower_bounds: dict[str, tuple[int, ...]]
    disadvantaged_percent_lower_bounds: tuple[float, ...]


@dataclass(frozen=True)
class RollupConfig:
    """Everything the roll-up stage is configured with."""

    source: str
    min_pupils: int
    trusts: TrustRules
    subgroups: SubgroupRules
    identification: IdentificationRules
    quadrants: dict[str, dict[str, str]]
    similar_schools: SimilarSchools
    history_data_stage: str


# ----------------------------------------------------------------------------- checks


def _mapping(path: Path, key: str, value: Any) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {key} must be a mapping")
    return value


def _integer(path: Path, key: str, value: Any, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{path}: {key} must be an integer of at least {minimum}, got {value!r}")
    return value


def _number(path: Path, key: str, value: Any) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigError(f"{path}: {key} must be a number, got {value!r}")
    return float(value)


def _strings(path: Path, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{path}: {key} must be a non-empty list")
    return tuple(_value_text(v) for v in value)


def _value_text(value: Any) -> str:
    """A subgroup value as text: YAML reads an unquoted yes/no as a boolean."""
    if isinstance(value, bool):
        return YES if value else NO
    return str(value)


def _increasing(path: Path, key: str, values: tuple[float, ...]) -> None:
    if any(later <= earlier for earlier, later in zip(values, values[1:])):
        raise ConfigError(f"{path}: {key} must be strictly increasing, got {list(values)}")


def _per_key_stage(path: Path, key: str, value: Any, key_stages: tuple[str, ...]) -> dict:
    content = _mapping(path, key, value)
    if set(content) != set(key_stages):
        raise ConfigError(f"{path}: {key} must give exactly the key stages {list(key_stages)}, got {sorted(content)}")
    return content


def _measure(path: Path, key: str, key_stage: str, name: Any, kinds: tuple[str, ...]) -> str:
    known = {m.name: m.kind for m in MEASURES[key_stage]}
    if name not in known or known[name] not in kinds:
        allowed = sorted(n for n, kind in known.items() if kind in kinds)
        raise ConfigError(f"{path}: {key}: {name!r} is not a {'/'.join(kinds)} measure of {key_stage}; one of {allowed}")
    return str(name)


# ----------------------------------------------------------------------------- sections


def _trusts(path: Path, content: Any) -> TrustRules:
    content = _mapping(path, "trusts", content)
    check_keys(path, content, {"min_full_years", "min_schools", "time_in_trust_weights"})
    min_years = _integer(path, "trusts.min_full_years", content["min_full_years"], 0)
    min_schools = _integer(path, "trusts.min_schools", content["min_schools"], 1)
    weights = _mapping(path, "trusts.time_in_trust_weights", content["time_in_trust_weights"])
    if not weights:
        raise ConfigError(f"{path}: trusts.time_in_trust_weights must give at least one weight")
    pairs = []
    for years, weight in sorted(weights.items(), key=lambda item: item[0] if isinstance(item[0], int) else -1):
        years = _integer(path, "trusts.time_in_trust_weights (full years)", years, 0)
        weight = _number(path, f"trusts.time_in_trust_weights.{years}", weight)
        if weight <= 0:
            raise ConfigError(f"{path}: trusts.time_in_trust_weights.{years} must be positive, got {weight}")
        pairs.append((years, weight))
    if pairs[0][0] != min_years:
        raise ConfigError(
            f"{path}: trusts.time_in_trust_weights must start at min_full_years ({min_years}), got {pairs[0][0]}"
        )
    return TrustRules(min_years, min_schools, tuple(pairs))


def _subgroups(path: Path, content: Any, key_stages: tuple[str, ...], ethnicities: tuple[str, ...]) -> SubgroupRules:
    content = _mapping(path, "subgroups", content)
    check_keys(path, content, {"dimensions", "measures", "ethnic_groups", "prior_attainment_bands"})
    dimensions = _strings(path, "subgroups.dimensions", content["dimensions"])
    unknown = sorted(set(dimensions) - set(DIMENSIONS))
    if unknown or len(set(dimensions)) != len(dimensions):
        raise ConfigError(f"{path}: subgroups.dimensions must be distinct names from {list(DIMENSIONS)}; unknown {unknown}")
    measures = {}
    for key_stage, names in _per_key_stage(path, "subgroups.measures", content["measures"], key_stages).items():
        key = f"subgroups.measures.{key_stage}"
        if names == "all":
            measures[key_stage] = tuple(m.name for m in MEASURES[key_stage])
        else:
            measures[key_stage] = tuple(_measure(path, key, key_stage, name, (PROGRESS, ATTAINMENT, CVA)) for name in _strings(path, key, names))
    groups = {}
    seen: dict[str, str] = {}
    for group, codes in _mapping(path, "subgroups.ethnic_groups", content["ethnic_groups"]).items():
        for code in _strings(path, f"subgroups.ethnic_groups.{group}", codes):
            if code in seen:
                raise ConfigError(f"{path}: subgroups.ethnic_groups: code {code} is in both {seen[code]} and {group}")
            if code not in ethnicities:
                raise ConfigError(f"{path}: subgroups.ethnic_groups.{group}: {code} is not an ethnicity code {list(ethnicities)}")
            seen[code] = str(group)
        groups[str(group)] = tuple(_strings(path, f"subgroups.ethnic_groups.{group}", codes))
    missing = [code for code in ethnicities if code not in seen]
    if missing:
        raise ConfigError(f"{path}: subgroups.ethnic_groups must place every ethnicity code in a group; missing {missing}")
    bands = {}
    for key_stage, block in _per_key_stage(path, "subgroups.prior_attainment_bands", content["prior_attainment_bands"], key_stages).items():
        block = _mapping(path, f"subgroups.prior_attainment_bands.{key_stage}", block)
        check_keys(path, block, {"middle", "high"})
        middle = _number(path, f"subgroups.prior_attainment_bands.{key_stage}.middle", block["middle"])
        high = _number(path, f"subgroups.prior_attainment_bands.{key_stage}.high", block["high"])
        _increasing(path, f"subgroups.prior_attainment_bands.{key_stage}", (middle, high))
        bands[key_stage] = (middle, high)
    return SubgroupRules(dimensions, measures, groups, bands)


def _identification(
    path: Path, content: Any, key_stages: tuple[str, ...], subgroups: SubgroupRules, min_pupils: int
) -> IdentificationRules:
    content = _mapping(path, "identification", content)
    check_keys(path, content, {"measure", "lowest_percent", "exit_above_percent", "min_pupils", "subgroups"})
    measure = {
        key_stage: _measure(path, f"identification.measure.{key_stage}", key_stage, name, (PROGRESS, ATTAINMENT, CVA))
        for key_stage, name in _per_key_stage(path, "identification.measure", content["measure"], key_stages).items()
    }
    lowest = _number(path, "identification.lowest_percent", content["lowest_percent"])
    exit_above = _number(path, "identification.exit_above_percent", content["exit_above_percent"])
    if not 0 < lowest <= exit_above < 100:
        raise ConfigError(f"{path}: identification needs 0 < lowest_percent <= exit_above_percent < 100, got {lowest} and {exit_above}")
    for key_stage, name in measure.items():
        if name not in subgroups.measures[key_stage]:
            raise ConfigError(f"{path}: identification.measure.{key_stage} ({name}) must be one of subgroups.measures.{key_stage}")
    eligible_pupils = _integer(path, "identification.min_pupils", content["min_pupils"], 1)
    if eligible_pupils < min_pupils:
        raise ConfigError(
            f"{path}: identification.min_pupils ({eligible_pupils}) must be at least suppression.min_pupils ({min_pupils}), "
            "so no school is identified on a withheld figure"
        )
    chosen = {}
    for dimension, values in _mapping(path, "identification.subgroups", content["subgroups"]).items():
        if dimension not in subgroups.dimensions:
            raise ConfigError(f"{path}: identification.subgroups.{dimension} is not one of subgroups.dimensions {list(subgroups.dimensions)}")
        values = _strings(path, f"identification.subgroups.{dimension}", values)
        bad = [v for v in values if v not in subgroups.values(dimension)]
        if bad:
            raise ConfigError(f"{path}: identification.subgroups.{dimension}: {bad} not among {list(subgroups.values(dimension))}")
        chosen[str(dimension)] = values
    if not chosen:
        raise ConfigError(f"{path}: identification.subgroups must name at least one subgroup")
    return IdentificationRules(measure, lowest, exit_above, eligible_pupils, chosen)


def _comparisons(path: Path, content: Any, key_stages: tuple[str, ...]) -> tuple[dict[str, dict[str, str]], SimilarSchools]:
    content = _mapping(path, "comparisons", content)
    check_keys(path, content, {"quadrants", "similar_schools"})
    quadrants = {}
    for key_stage, pairs in _per_key_stage(path, "comparisons.quadrants", content["quadrants"], key_stages).items():
        key = f"comparisons.quadrants.{key_stage}"
        quadrants[key_stage] = {
            _measure(path, key, key_stage, progress, (PROGRESS, CVA)): _measure(path, key, key_stage, attainment, (ATTAINMENT,))
            for progress, attainment in _mapping(path, key, pairs).items()
        }
    similar = _mapping(path, "comparisons.similar_schools", content["similar_schools"])
    check_keys(path, similar, {"cohort_size_lower_bounds", "disadvantaged_percent_lower_bounds"})
    sizes = {}
    for key_stage, bounds in _per_key_stage(
        path, "comparisons.similar_schools.cohort_size_lower_bounds", similar["cohort_size_lower_bounds"], key_stages
    ).items():
        key = f"comparisons.similar_schools.cohort_size_lower_bounds.{key_stage}"
        if not isinstance(bounds, list) or not bounds:
            raise ConfigError(f"{path}: {key} must be a non-empty list")
        values = tuple(_integer(path, key, b, 1) for b in bounds)
        _increasing(path, key, values)
        if values[0] != 1:
            raise ConfigError(f"{path}: {key} must start at 1 (every school with a pupil has a band), got {values[0]}")
        sizes[key_stage] = values
    key = "comparisons.similar_schools.disadvantaged_percent_lower_bounds"
    percents = similar["disadvantaged_percent_lower_bounds"]
    if not isinstance(percents, list) or not percents:
        raise ConfigError(f"{path}: {key} must be a non-empty list")
    percents = tuple(_number(path, key, p) for p in percents)
    _increasing(path, key, percents)
    if percents[0] != 0 or percents[-1] > 100:
        raise ConfigError(f"{path}: {key} must start at 0 and stay within 0-100, got {list(percents)}")
    return quadrants, SimilarSchools(sizes, percents)


def load_rollup_config(path: str | Path, key_stages: tuple[str, ...], ethnicities: tuple[str, ...]) -> RollupConfig:
    """Load and check a roll-up configuration.

    Args:
        path: the YAML file.
        key_stages: the key stages of the code lists (each needs its settings).
        ethnicities: the ethnicity codes of the code lists (each must be in one major group).
    """
    path = Path(path)
    content = read_yaml(path)
    check_keys(path, content, TOP_KEYS)
    suppression = _mapping(path, "suppression", content["suppression"])
    check_keys(path, suppression, {"min_pupils"})
    min_pupils = _integer(path, "suppression.min_pupils", suppression["min_pupils"], 1)
    subgroups = _subgroups(path, content["subgroups"], key_stages, ethnicities)
    quadrants, similar = _comparisons(path, content["comparisons"], key_stages)
    trends = _mapping(path, "trends", content["trends"])
    check_keys(path, trends, {"history_data_stage"})
    if trends["history_data_stage"] not in HISTORY_DATA_STAGES:
        raise ConfigError(f"{path}: trends.history_data_stage must be one of {list(HISTORY_DATA_STAGES)}, got {trends['history_data_stage']!r}")
    return RollupConfig(
        source=str(path.resolve()),
        min_pupils=min_pupils,
        trusts=_trusts(path, content["trusts"]),
        subgroups=subgroups,
        identification=_identification(path, content["identification"], key_stages, subgroups, min_pupils),
        quadrants=quadrants,
        similar_schools=similar,
        history_data_stage=str(trends["history_data_stage"]),
    )
