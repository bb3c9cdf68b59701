"""National estimates, pupil progress, the extreme-negative adjustment, school scores and bands.

The pieces both key stages share (SPEC 2.1). They work on a long pupil frame, one row
per pupil per subject (or Progress 8 element), with these columns:

- `pupil_id`, `school_id`, `subject`
- `prior_attainment_group` (int; null when the pupil has no prior attainment)
- `outcome` (double; the KS2 score or nominal score, or the A8 element points)
- `in_progress` (bool): the pupil gets a progress score in this subject
- `in_national` (bool): the pupil also counts towards the national estimates (state-funded
  mainstream schools only); `in_national` implies `in_progress`.

The rules, in order:

1. National estimate per (subject, group): the mean (or, in the legacy median-line
   method, the median) of `outcome` over `in_national` pupils, with n and SD.
2. Pupil progress = (outcome - estimate) / divisor (1 for KS2; 10 for Progress 8, 2 for
   the English and maths elements, 3 for EBacc and open).
3. Extreme negative adjustment: within each (subject, group) take the mean and SD of
   progress over `in_national` pupils; z = (progress - mean) / SD. K = round(share x
   number of `in_national` pupils in the subject) (share 1%); z* = the K-th smallest z
   among them. A pupil with z < z* has the adjusted score cap = mean + z* x SD of their
   group; everyone else keeps their score. Both scores are kept.
4. School score per subject = mean adjusted progress of its `in_progress` pupils; 95%
   interval = score +/- 1.96 x national SD / sqrt(n), where the national SD is that of
   the `in_national` pupils' adjusted progress in the subject (or a published SD).
5. Band: `well_above` when score >= the subject's threshold and the lower limit > 0;
   `above` when lower > 0; `well_below` when score <= -threshold and upper < 0; `below`
   when upper < 0; otherwise `average` (the interval contains 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from valueadded import sums
from valueadded.io.pseudonym import carried_pseudonyms
from valueadded.io.schemas import NATIONAL_ESTIMATES, PARTITION_NAMES, PUPIL_PROGRESS, SCHOOL_MEASURES

Z_95 = 1.959963984540054  # two-sided 95% normal quantile; DfE's tables round it to 1.96


@dataclass(frozen=True)
class ProgressRules:
    """How a key stage turns outcomes into progress and school scores.

    Attributes:
        estimate_method: "mean" (national method) or "median" (legacy median line).
        extreme_share: share of pupils nationally whose scores are capped (0.01).
        divisors: subject -> divisor of (outcome - estimate); subjects not listed use 1.
        well_thresholds: subject -> the score a school must reach (in absolute value)
            for "well above" / "well below".
        ci_z: the interval's normal quantile.
    """

    estimate_method: str
    extreme_share: float
    divisors: dict[str, float]
    well_thresholds: dict[str, float]
    ci_z: float = 1.96

    def __post_init__(self) -> None:
        if self.estimate_method not in ("mean", "median"):
            raise ValueError(f"estimate_method must be mean or median, got {self.estimate_method!r}")
        if not 0 <= self.extreme_share < 1:
            raise ValueError(f"extreme_share must be in [0, 1), got {self.extreme_share}")


def _by_subject_map(mapping: dict[str, float], default: float | None) -> Column:
    """A Column giving mapping[subject], or default (None: null) for a subject not in the mapping."""
    value = F.lit(None).cast("double") if default is None else F.lit(float(default))
    for subject, number in sorted(mapping.items()):
        value = F.when(F.col("subject") == subject, F.lit(float(number))).otherwise(value)
    return value


# How far above the wanted share of pupils the first, approximate pass of the
# extreme-negative search looks; the exact pass then sorts only those pupils.
_APPROX_ACCURACY = 10_000
GROUP_KEYS = ["subject", "prior_attainment_group"]


def _local_frame(spark, frame: pd.DataFrame, schema: T.StructType) -> DataFrame:
    """A small driver-side table as a broadcastable Spark frame with a fixed schema."""
    rows = [tuple(None if pd.isna(v) else v for v in row) for row in frame[[f.name for f in schema.fields]].itertuples(index=False)]
    return F.broadcast(spark.createDataFrame(rows, schema))


def outcome_statistics(long: DataFrame, method: str) -> pd.DataFrame:
    """Per (subject, group), over `in_national` pupils: n, mean, outcome_sd (n - 1) and,
    for the legacy median line, the median. One Spark aggregation; a small pandas frame.

    The mean and SD are worked out from exact sums (valueadded.sums), so they are the
    same whatever the row order or partitioning. The SD comes from the sums of the values
    and of their squares (as doubles): exact for whole-number or points outcomes, whose
    squares are exact doubles; for other values it can lose a few digits where the SD is
    tiny beside the mean (never for progress, whose mean is near 0)."""
    outcome = F.col("outcome")
    medians = ["median"] if method == "median" else []
    aggregates = [F.count(F.lit(1)).cast("int").alias("n"), *sums.moment_sums(outcome)]
    if medians:
        aggregates.append(F.percentile(outcome, F.lit(0.5)).cast("double").alias("median"))
    rows = long.where(F.col("in_national")).groupBy(*GROUP_KEYS).agg(*aggregates).collect()
    stats = pd.DataFrame(
        [
            {
                "subject": row["subject"],
                "prior_attainment_group": row["prior_attainment_group"],
                "n": row["n"],
                **dict(zip(("mean", "outcome_sd"), sums.mean_and_sd(row))),
                **{name: row[name] for name in medians},
            }
            for row in rows
        ],
        columns=[*GROUP_KEYS, "n", "mean", "outcome_sd", *medians],
    )
    stats["prior_attainment_group"] = stats["prior_attainment_group"].astype("int64")
    stats["n"] = stats["n"].astype("int32")
    doubles = ["mean", "outcome_sd", *medians]
    stats[doubles] = stats[doubles].astype("float64")
    return stats.sort_values(GROUP_KEYS).reset_index(drop=True)


def national_estimates(stats: pd.DataFrame, method: str) -> pd.DataFrame:
    """Rule 1: subject, prior_attainment_group, n, estimate, outcome_sd."""
    estimates = stats[[*GROUP_KEYS, "n", "outcome_sd"]].copy()
    estimates["estimate"] = stats["mean"] if method == "mean" else stats["median"]
    return estimates[[*GROUP_KEYS, "n", "estimate", "outcome_sd"]]


def group_progress_statistics(stats: pd.DataFrame, estimates: pd.DataFrame, rules: ProgressRules) -> pd.DataFrame:
    """Rule 3's per-group mean and SD of progress over the national pupils with a score.

    Progress is a linear function of the outcome within a group, (outcome - estimate) /
    divisor, so its mean is (mean outcome - estimate) / divisor and its SD is the outcome
    SD / divisor: no second pass over the pupils. Only groups with an estimate appear.
    """
    merged = stats[[*GROUP_KEYS, "n", "mean", "outcome_sd"]].merge(estimates[[*GROUP_KEYS, "estimate"]], on=GROUP_KEYS)
    divisor = merged["subject"].map(lambda subject: float(rules.divisors.get(subject, 1.0)))
    merged["progress_mean"] = (merged["mean"] - merged["estimate"]) / divisor
    merged["progress_sd"] = merged["outcome_sd"] / divisor
    return merged[[*GROUP_KEYS, "n", "estimate", "progress_mean", "progress_sd"]]


def extreme_negative_z_star(long: DataFrame, groups: pd.DataFrame, rules: ProgressRules) -> dict[str, float]:
    """Rule 3's z* per subject: the K-th smallest z among the subject's national pupils.

    K = floor(share x n + 0.5), n = the subject's national pupils with a score. A subject
    with K = 0, or with fewer than K pupils who have a z (a group of one pupil, or of
    identical scores, has no SD and so no z), has no z*. Exact, in two passes over the
    national pupils: an approximate quantile bounds the K smallest from above, then only
    the pupils under the bound are brought to the driver and sorted.
    """
    sizes = groups.groupby("subject")["n"].sum()
    with_z = groups[groups["progress_sd"] > 0]
    z_counts = with_z.groupby("subject")["n"].sum()
    wanted = {}
    for subject, n in sizes.items():
        k = int(math.floor(rules.extreme_share * int(n) + 0.5))  # round half up, not to even
        if k > 0 and int(z_counts.get(subject, 0)) >= k:
            wanted[subject] = (k, int(n))
    if not wanted:
        return {}
    spark = long.sparkSession
    schema = T.StructType([
        T.StructField("subject", T.StringType()), T.StructField("prior_attainment_group", T.IntegerType()),
        T.StructField("estimate", T.DoubleType()), T.StructField("progress_mean", T.DoubleType()),
        T.StructField("progress_sd", T.DoubleType()),
    ])
    lookup = _local_frame(spark, with_z[with_z["subject"].isin(list(wanted))], schema)
    divisor = _by_subject_map(rules.divisors, 1.0)
    z = within_group_z(divisor)
    national = long.where(F.col("in_national")).join(lookup, on=GROUP_KEYS, how="inner").select("subject", z.alias("z"))

    share = min(1.0, max(2 * k / n for k, n in wanted.values()) + 1.0 / _APPROX_ACCURACY)
    z_star: dict[str, float] = {}
    while wanted:
        bounds = {
            row["subject"]: row["bound"]
            for row in national.groupBy("subject")
            .agg(F.percentile_approx("z", share, _APPROX_ACCURACY).alias("bound"))
            .collect()
        }
        bound = _by_subject_map({subject: bounds[subject] for subject in wanted}, None)
        smallest = national.where(F.col("z") <= bound).toPandas()
        for subject, values in smallest.groupby("subject")["z"]:
            k = wanted[subject][0]
            if len(values) >= k:
                z_star[subject] = float(np.partition(values.to_numpy(), k - 1)[k - 1])
        wanted = {subject: kn for subject, kn in wanted.items() if subject not in z_star}
        if share >= 1.0:
            break
        share = min(1.0, 2 * share)  # the approximate bound fell short: widen it
    return z_star


def within_group_z(divisor: Column) -> Column:
    """A pupil's z in their group: ((outcome - estimate) / divisor - progress_mean) / progress_sd.

    The one expression both the z* search and the cap test use, so that a pupil tied with
    the z* pupil gets the same double as z* and is not capped (their progress already is
    the cap). Comparing progress with the cap instead would decide such ties by how the
    cap, mean + z* x SD, happened to round in its last bit.
    """
    return (((F.col("outcome") - F.col("estimate")) / divisor) - F.col("progress_mean")) / F.col("progress_sd")


def caps_and_estimates(estimates: pd.DataFrame, groups: pd.DataFrame, z_star: dict[str, float]) -> pd.DataFrame:
    """Per (subject, group): the estimate row with progress_mean, progress_sd and cap =
    mean + z* x SD (null without a z* or an SD)."""
    merged = estimates.merge(groups[[*GROUP_KEYS, "progress_mean", "progress_sd"]], on=GROUP_KEYS, how="left")
    star = merged["subject"].map(z_star).astype("float64")
    merged["cap"] = merged["progress_mean"] + star * merged["progress_sd"]
    return merged


def pupil_progress(long: DataFrame, table: DataFrame, rules: ProgressRules, z_star: dict[str, float]) -> DataFrame:
    """Rules 2 and 3 per pupil: add estimate, progress, capped and adjusted_progress.

    `table` has subject, prior_attainment_group, estimate, progress_mean, progress_sd and
    cap (one row per pair); `z_star` is subject -> z*. A pupil whose z is below z* is
    raised to their group's cap; a group with a null or zero SD, or a subject without z*,
    is never capped. Rows not `in_progress` get nulls.
    """
    joined = long.join(table.select(*GROUP_KEYS, "estimate", "progress_mean", "progress_sd", "cap"), on=GROUP_KEYS, how="left")
    divisor = _by_subject_map(rules.divisors, 1.0)
    star = _by_subject_map(z_star, None)
    progress = F.when(F.col("in_progress"), (F.col("outcome") - F.col("estimate")) / divisor).cast("double")
    can_cap = progress.isNotNull() & F.col("cap").isNotNull() & (F.col("progress_sd") > 0)
    capped = F.when(can_cap, within_group_z(divisor) < star)  # z only where it is defined
    return (
        joined.withColumn("progress", progress)
        .withColumn("capped", F.coalesce(capped, F.lit(False)))
        .withColumn("adjusted_progress", F.when(F.col("capped"), F.col("cap")).otherwise(F.col("progress")))
        .drop("cap", "progress_mean", "progress_sd")
    )


def national_progress_sd(adjusted: DataFrame) -> dict[str, float | None]:
    """Subject -> the SD of in_national pupils' adjusted progress (for intervals), from
    exact sums (valueadded.sums): the same whatever the row order or partitioning."""
    value = F.col("adjusted_progress")
    rows = (
        adjusted.where(F.col("in_national") & value.isNotNull())
        .groupBy("subject")
        .agg(*sums.moment_sums(value))
        .collect()
    )
    return {row["subject"]: sums.mean_and_sd(row)[1] for row in rows}


def band(score: Column, lower: Column, upper: Column, threshold: Column) -> Column:
    return (
        F.when((score >= threshold) & (lower > 0), F.lit("well_above"))
        .when(lower > 0, F.lit("above"))
        .when((score <= -threshold) & (upper < 0), F.lit("well_below"))
        .when(upper < 0, F.lit("below"))
        .when(score.isNotNull(), F.lit("average"))
    )


def school_scores(adjusted: DataFrame, national_sd: DataFrame, rules: ProgressRules) -> DataFrame:
    """One row per (school_id, subject) with at least one pupil with progress.

    Columns: school_id, subject, n, score, lower, upper, band, national_sd.
    """
    per_school = (
        adjusted.where(F.col("adjusted_progress").isNotNull())
        .groupBy("school_id", "subject")
        .agg(F.count(F.lit(1)).cast("int").alias("n"), sums.exact_mean(F.col("adjusted_progress")).alias("score"))
        .join(F.broadcast(national_sd), on="subject", how="left")
    )
    half_width = F.lit(rules.ci_z) * F.col("national_sd") / F.sqrt(F.col("n").cast("double"))
    lower, upper = F.col("score") - half_width, F.col("score") + half_width
    threshold = _by_subject_map(rules.well_thresholds, float("inf"))
    return per_school.select(
        "school_id",
        "subject",
        "n",
        "score",
        lower.alias("lower"),
        upper.alias("upper"),
        band(F.col("score"), lower, upper, threshold).alias("band"),
        "national_sd",
    )


_ESTIMATES_SCHEMA = T.StructType([
    T.StructField("subject", T.StringType(), False),
    T.StructField("prior_attainment_group", T.IntegerType(), False),
    T.StructField("n", T.IntegerType()),
    T.StructField("estimate", T.DoubleType()),
    T.StructField("outcome_sd", T.DoubleType()),
    T.StructField("progress_mean", T.DoubleType()),
    T.StructField("progress_sd", T.DoubleType()),
    T.StructField("cap", T.DoubleType()),
])


def progress_measures(long: DataFrame, rules: ProgressRules, published: pd.DataFrame | None = None) -> dict[str, object]:
    """Run rules 1-5 on a long pupil frame.

    The national figures (estimates, group statistics, z*, caps, national SDs) are small
    and computed on the driver from a few aggregations; the pupil and school frames are
    left lazy over `long`, which the caller should materialise (valueadded.spark).

    Args:
        long: one row per pupil per subject (columns in the module docstring).
        rules: the key stage's rules.
        published: optional published estimates to apply instead of computing them, a
            pandas frame of subject, prior_attainment_group, estimate, national_sd.

    Returns:
        "estimates" (per subject and group: n, estimate, outcome_sd, progress_mean,
        progress_sd, cap; n and outcome_sd null for published estimates), "pupils" (the
        long frame with estimate, progress, capped, adjusted_progress), "schools" (per
        school and subject), "z_star" (subject -> z*) and "national_sd" (subject -> SD).
    """
    spark = long.sparkSession
    stats = outcome_statistics(long, rules.estimate_method)
    if published is None:
        estimates = national_estimates(stats, rules.estimate_method)
    else:
        estimates = published[[*GROUP_KEYS, "estimate"]].assign(n=None, outcome_sd=None)
        estimates["prior_attainment_group"] = estimates["prior_attainment_group"].astype("int64")
    groups = group_progress_statistics(stats, estimates, rules)
    z_star = extreme_negative_z_star(long, groups, rules)
    table = caps_and_estimates(estimates, groups, z_star)
    table_frame = _local_frame(spark, table, _ESTIMATES_SCHEMA)
    adjusted = pupil_progress(long, table_frame, rules, z_star)
    if published is not None:
        national_sd = published.groupby("subject")["national_sd"].first().to_dict()
    else:
        national_sd = national_progress_sd(adjusted)
    sd_frame = spark.createDataFrame(
        [(subject, None if sd is None else float(sd)) for subject, sd in sorted(national_sd.items())],
        "subject string, national_sd double",
    )
    return {
        "estimates": table_frame,
        "pupils": adjusted,
        "schools": school_scores(adjusted, sd_frame, rules),
        "z_star": z_star,
        "national_sd": national_sd,
    }


def _data_columns(schema) -> list[str]:
    return [name for name in schema.names if name not in PARTITION_NAMES]


NO_NATIONAL_ESTIMATE = "no_national_estimate"


def without_estimate_is_excluded(pupils: DataFrame) -> DataFrame:
    """A pupil whose group has no estimate has no score: say why instead of a silent null.

    Such a group has no state-funded mainstream pupil (computed estimates; e.g. a group
    only special-school pupils are in) or is missing from a published table. Its pupils
    get `exclusion_reason` no_national_estimate and leave `in_progress` and `in_national`.

    Args:
        pupils: progress_measures()["pupils"], with an `exclusion_reason` column.
    """
    unestimated = F.col("in_progress") & F.col("estimate").isNull()
    return (
        pupils.withColumn("exclusion_reason", F.when(unestimated, F.lit(NO_NATIONAL_ESTIMATE)).otherwise(F.col("exclusion_reason")))
        .withColumn("in_progress", F.col("in_progress") & ~unestimated)
        .withColumn("in_national", F.col("in_national") & ~unestimated)
    )


def pupil_progress_rows(pupils: DataFrame) -> DataFrame:
    """The `pupil_progress` columns (partition columns are added by the writer).

    `pupils` is progress_measures()["pupils"] with an `exclusion_reason` column.
    """
    return pupils.select(*_data_columns(PUPIL_PROGRESS), *carried_pseudonyms(pupils))


def national_estimate_rows(estimates: DataFrame, source: str) -> DataFrame:
    """The `national_estimates` columns from progress_measures()["estimates"]."""
    with_source = estimates.withColumn("source", F.lit(source))
    if "n" not in estimates.columns:
        with_source = with_source.withColumn("n", F.lit(None).cast("int"))
    if "outcome_sd" not in estimates.columns:
        with_source = with_source.withColumn("outcome_sd", F.lit(None).cast("double"))
    return with_source.select(*_data_columns(NATIONAL_ESTIMATES))


def school_progress_rows(schools: DataFrame, measure_prefix: str = "progress_") -> DataFrame:
    """`school_measures` rows for progress: measure = prefix + subject."""
    return schools.select(
        "school_id",
        F.concat(F.lit(measure_prefix), F.col("subject")).alias("measure"),
        "n",
        "score",
        "lower",
        "upper",
        "band",
    ).select(*_data_columns(SCHOOL_MEASURES))
