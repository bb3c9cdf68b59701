"""KS1-KS2 progress and KS2 attainment: the primary-school measures (SPEC 2.1-2.2).

The stage reads the pupil table (one row per accepted pupil of the KS2 cohort) and:

1. gives each pupil a KS1 start point (prior_attainment.py) and group;
2. gives each pupil an outcome per subject (inclusion.py), and decides per subject who
   has a progress score: an `included` pupil with a start point and an outcome. The
   reason recorded for anyone else is, first, the pupil-level reason (e.g.
   `discounted`), then the start-point reason, then the subject's;
3. computes national estimates, progress, the extreme-negative adjustment, school
   scores, intervals and bands (estimates.py); the national estimates count pupils
   of state-funded mainstream schools only, while pupils of special schools get
   progress scores too. A pupil in a group with no estimate (no state-funded
   mainstream pupil is in it) has no score, with reason `no_national_estimate`;
4. computes attainment per school: % at the expected and the higher standard in
   reading, writing, maths and all three (denominator: every included pupil, whatever
   their result code), and the average scaled score in reading and maths over pupils
   with a scaled score (80+; nominal scores never count).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from valueadded.config import ConfigError, check_keys, load_year_tables
from valueadded.io.pseudonym import carried_pseudonyms
from valueadded.io.schemas import NATIONAL_ESTIMATES, PUPIL_PROGRESS, PUPIL_RESULTS, SCHOOL_MEASURES
from valueadded.measures import estimates
from valueadded.measures.inclusion import NominalScores, subject_test_outcome, writing_outcome
from valueadded.measures.prior_attainment import ks1_start_point, prior_attainment_group
from valueadded.spark import materialise

SUBJECTS = ("reading", "writing", "maths")
TEST_SUBJECTS = ("reading", "maths")


@dataclass(frozen=True)
class Ks2Tables:
    """The year's KS2 tables (conf/reference/ks2/<year>.yaml)."""

    ks1_points: dict[str, float]
    ks1_no_result: tuple[str, ...]
    group_lower_bounds: tuple[float, ...]
    nominal: NominalScores
    writing_points: dict[str, float]
    excluded_test_codes: tuple[str, ...]
    excluded_writing_ta: tuple[str, ...]
    expected_standard: float
    higher_standard: float
    writing_expected_ta: tuple[str, ...]
    writing_higher_ta: tuple[str, ...]
    rules: estimates.ProgressRules

    @classmethod
    def from_mapping(cls, path: Path, content: dict[str, Any]) -> "Ks2Tables":
        check_keys(path, content, {
            "ks1_points", "ks1_no_result", "prior_attainment_group_lower_bounds", "nominal_scores", "writing_points",
            "excluded_test_codes", "excluded_writing_ta", "expected_standard", "higher_standard",
            "writing_expected_ta", "writing_higher_ta", "estimate_method", "extreme_share", "well_thresholds",
        })
        nominal = content["nominal_scores"]
        check_keys(path, nominal, {"pscale", "pre_key_stage", "sat_without_scaled_score", "sat_without_scaled_score_ta"})
        bounds = tuple(float(b) for b in content["prior_attainment_group_lower_bounds"])
        if not bounds or any(later <= earlier for earlier, later in zip(bounds, bounds[1:])):
            raise ConfigError(f"{path}: prior_attainment_group_lower_bounds must be strictly increasing")
        thresholds = {str(k): float(v) for k, v in content["well_thresholds"].items()}
        if set(thresholds) != set(SUBJECTS):
            raise ConfigError(f"{path}: well_thresholds must give {list(SUBJECTS)}")
        try:
            rules = estimates.ProgressRules(
                estimate_method=str(content["estimate_method"]),
                extreme_share=float(content["extreme_share"]),
                divisors={},
                well_thresholds=thresholds,
            )
        except ValueError as error:
            raise ConfigError(f"{path}: {error}") from error
        return cls(
            ks1_points={str(k): float(v) for k, v in content["ks1_points"].items()},
            ks1_no_result=tuple(str(c) for c in content["ks1_no_result"]),
            group_lower_bounds=bounds,
            nominal=NominalScores(
                pscale={str(k): float(v) for k, v in nominal["pscale"].items()},
                pre_key_stage={str(k): float(v) for k, v in nominal["pre_key_stage"].items()},
                sat_without_scaled_score=float(nominal["sat_without_scaled_score"]),
                sat_without_scaled_score_ta=tuple(str(c) for c in nominal["sat_without_scaled_score_ta"]),
            ),
            writing_points={str(k): float(v) for k, v in content["writing_points"].items()},
            excluded_test_codes=tuple(str(c) for c in content["excluded_test_codes"]),
            excluded_writing_ta=tuple(str(c) for c in content["excluded_writing_ta"]),
            expected_standard=float(content["expected_standard"]),
            higher_standard=float(content["higher_standard"]),
            writing_expected_ta=tuple(str(c) for c in content["writing_expected_ta"]),
            writing_higher_ta=tuple(str(c) for c in content["writing_higher_ta"]),
            rules=rules,
        )


def load_tables(year: int) -> Ks2Tables:
    return Ks2Tables.from_mapping(*load_year_tables("ks2", year))


def with_prior_attainment(pupils: DataFrame, tables: Ks2Tables) -> DataFrame:
    """Add prior_attainment (KS1 APS), prior_attainment_group and `_prior_reason`."""
    aps, reason = ks1_start_point(tables.ks1_points, tables.ks1_no_result)
    group = prior_attainment_group(F.col("prior_attainment"), tables.group_lower_bounds)
    return (
        pupils.withColumn("prior_attainment", aps)
        .withColumn("_prior_reason", reason)
        .withColumn("prior_attainment_group", group)
        .withColumn(
            "_prior_reason",
            F.when(F.col("_prior_reason").isNull() & F.col("prior_attainment_group").isNull(), F.lit("prior_below_group_table"))
            .otherwise(F.col("_prior_reason")),
        )
    )


def long_outcomes(pupils: DataFrame, tables: Ks2Tables) -> DataFrame:
    """One row per pupil per subject, in the shape estimates.py reads."""
    outcomes = {subject: subject_test_outcome(subject, tables.nominal, tables.excluded_test_codes) for subject in TEST_SUBJECTS}
    outcomes["writing"] = writing_outcome(tables.writing_points, tables.nominal, tables.excluded_writing_ta)
    mainstream = (F.col("school_provision") == "mainstream") & (F.col("school_sector") == "state_funded")
    parts = []
    for subject in SUBJECTS:
        outcome, subject_reason = outcomes[subject]
        reason = F.coalesce(F.col("exclusion_reason"), F.col("_prior_reason"), subject_reason)
        parts.append(
            pupils.select(
                "pupil_id",
                *carried_pseudonyms(pupils),
                "school_id",
                F.lit(subject).alias("subject"),
                "prior_attainment_group",
                outcome.alias("outcome"),
                reason.isNull().alias("in_progress"),
                (reason.isNull() & mainstream).alias("in_national"),
                reason.alias("exclusion_reason"),
            )
        )
    long = parts[0]
    for part in parts[1:]:
        long = long.unionByName(part)
    return long


def attainment_rows(pupils: DataFrame, tables: Ks2Tables) -> DataFrame:
    """`school_measures` rows for attainment, one per school per measure.

    Percentages are over every included pupil; averages over pupils with a scaled score.
    """
    included = pupils.where(F.col("included"))
    expected = {
        subject: F.coalesce(F.col(f"{subject}_scaled_score") >= tables.expected_standard, F.lit(False)) for subject in TEST_SUBJECTS
    }
    higher = {
        subject: F.coalesce(F.col(f"{subject}_scaled_score") >= tables.higher_standard, F.lit(False)) for subject in TEST_SUBJECTS
    }
    expected["writing"] = F.coalesce(F.col("writing_ta").isin(list(tables.writing_expected_ta)), F.lit(False))
    higher["writing"] = F.coalesce(F.col("writing_ta").isin(list(tables.writing_higher_ta)), F.lit(False))
    expected["rwm"] = expected["reading"] & expected["writing"] & expected["maths"]
    higher["rwm"] = higher["reading"] & higher["writing"] & higher["maths"]
    aggregates = [F.count(F.lit(1)).alias("_n_pupils")]
    for subject in ("reading", "writing", "maths", "rwm"):
        aggregates.append(F.sum(expected[subject].cast("int")).alias(f"_exp_{subject}"))
        aggregates.append(F.sum(higher[subject].cast("int")).alias(f"_high_{subject}"))
    for subject in TEST_SUBJECTS:
        scaled = F.col(f"{subject}_scaled_score").cast("double")
        aggregates.append(F.count(scaled).alias(f"_n_scaled_{subject}"))
        aggregates.append(F.avg(scaled).alias(f"_avg_{subject}"))
    per_school = included.groupBy("school_id").agg(*aggregates)
    # One row per school and measure from the one aggregation. A union of one select per
    # measure would aggregate the pupils once per measure: Spark prunes each branch to the
    # sums it uses, so the branches differ and none reuses another's (10 passes over the
    # national pupils instead of one).
    n_pupils = F.col("_n_pupils").cast("int")
    entries = [
        (f"{prefix}_{subject}", n_pupils, F.lit(100.0) * F.col(f"{column}_{subject}") / F.col("_n_pupils"))
        for subject in ("reading", "writing", "maths", "rwm")
        for prefix, column in (("pct_expected", "_exp"), ("pct_higher", "_high"))
    ]
    entries += [
        (f"average_scaled_score_{subject}", F.col(f"_n_scaled_{subject}").cast("int"), F.col(f"_avg_{subject}"))
        for subject in TEST_SUBJECTS
    ]
    row = F.explode(F.array(*(
        F.struct(F.lit(measure).alias("measure"), n.alias("n"), score.cast("double").alias("score")) for measure, n, score in entries
    )))
    null = F.lit(None).cast("double")
    return (
        per_school.select("school_id", row.alias("_row"))
        .where(F.col("_row.n") > 0)  # an average needs a pupil with a scaled score
        .select("school_id", "_row.measure", "_row.n", "_row.score", null.alias("lower"), null.alias("upper"),
                F.lit(None).cast("string").alias("band"))
    )


def stage_measures(release) -> None:
    """The KS2 measures stage: enrich the pupil table and publish the KS2 outputs."""
    tables = load_tables(release.year)
    pupils = materialise(with_prior_attainment(release.frames["pupils"], tables))
    long = materialise(long_outcomes(pupils, tables))
    result = estimates.progress_measures(long, tables.rules)
    release.frames["pupil_table"] = release.frames["pupils"]  # kept so the run can free it
    release.frames["pupils"] = pupils
    release.frames["ks2_long"] = long
    release.record.row_counts["ks2_z_star"] = result["z_star"]
    release.publish(PUPIL_RESULTS, pupils.select(*PUPIL_RESULTS.names, *carried_pseudonyms(pupils)))
    release.publish(PUPIL_PROGRESS, estimates.pupil_progress_rows(estimates.without_estimate_is_excluded(result["pupils"])))
    release.publish(NATIONAL_ESTIMATES, estimates.national_estimate_rows(result["estimates"], "computed"))
    school_rows = estimates.school_progress_rows(result["schools"]).unionByName(attainment_rows(pupils, tables))
    release.publish(SCHOOL_MEASURES, school_rows)
