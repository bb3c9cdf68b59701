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

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

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


def _by_subject_map(mapping: dict[str, float], default: float) -> Column:
    """A Column giving mapping[subject], or default for a subject not in the mapping."""
    value = F.lit(default)
    for subject, number in sorted(mapping.items()):
        value = F.when(F.col("subject") == subject, F.lit(float(number))).otherwise(value)
    return value


def national_estimates(long: DataFrame, method: str) -> DataFrame:
    """One row per (subject, prior_attainment_group): n, estimate, outcome_sd.

    Only `in_national` pupils count; SD is the sample SD (n - 1), null for n = 1.
    """
    centre = F.mean("outcome") if method == "mean" else F.percentile(F.col("outcome"), F.lit(0.5))
    return (
        long.where(F.col("in_national"))
        .groupBy("subject", "prior_attainment_group")
        .agg(
            F.count(F.lit(1)).cast("int").alias("n"),
            centre.cast("double").alias("estimate"),
            F.stddev_samp("outcome").alias("outcome_sd"),
        )
        .select("subject", "prior_attainment_group", "n", "estimate", "outcome_sd")
    )


def pupil_progress(long: DataFrame, estimates: DataFrame, rules: ProgressRules) -> DataFrame:
    """Add `estimate` and `progress` to every `in_progress` row (null otherwise).

    `estimates` needs subject, prior_attainment_group and estimate, one row per pair.
    """
    joined = long.join(
        estimates.select("subject", "prior_attainment_group", "estimate"),
        on=["subject", "prior_attainment_group"],
        how="left",
    )
    divisor = _by_subject_map(rules.divisors, 1.0)
    progress = F.when(F.col("in_progress"), (F.col("outcome") - F.col("estimate")) / divisor)
    return joined.withColumn("progress", progress.cast("double"))


def extreme_negative_caps(progressed: DataFrame, share: float) -> tuple[DataFrame, dict[str, float]]:
    """Per (subject, group): progress mean, SD and cap; and z* per subject.

    Returns:
        A frame with subject, prior_attainment_group, progress_mean, progress_sd, cap,
        and the dict subject -> z* (absent for a subject with K = 0 pupils to cap).
    """
    national = progressed.where(F.col("in_national") & F.col("progress").isNotNull())
    group_stats = national.groupBy("subject", "prior_attainment_group").agg(
        F.mean("progress").alias("progress_mean"), F.stddev_samp("progress").alias("progress_sd")
    )
    # A group whose pupils all have the same progress has SD 0: no z, never capped
    # (and no division by zero, which ANSI mode would raise).
    with_z = national.join(group_stats, on=["subject", "prior_attainment_group"], how="inner").withColumn(
        "z", F.when(F.col("progress_sd") > 0, (F.col("progress") - F.col("progress_mean")) / F.col("progress_sd"))
    )
    subject_sizes = {row["subject"]: row["n"] for row in national.groupBy("subject").agg(F.count(F.lit(1)).alias("n")).collect()}
    z_star: dict[str, float] = {}
    for subject, n in sorted(subject_sizes.items()):
        k = int(math.floor(share * n + 0.5))  # round half up (Python's round() goes to even)
        if k == 0:
            continue
        # The K smallest z of the subject, ordered on the driver: K is about 1% of a year
        # group, so this is thousands of values, not the table.
        smallest = (
            with_z.where((F.col("subject") == subject) & F.col("z").isNotNull())
            .orderBy(F.col("z").asc(), F.col("pupil_id").asc())
            .limit(k)
            .agg(F.max("z").alias("z_star"), F.count(F.lit(1)).alias("k"))
            .first()
        )
        if smallest["k"] == k:
            z_star[subject] = float(smallest["z_star"])
    z_star_column = F.lit(None).cast("double")
    for subject, value in sorted(z_star.items()):
        z_star_column = F.when(F.col("subject") == subject, F.lit(value)).otherwise(z_star_column)
    caps = group_stats.withColumn("cap", F.col("progress_mean") + z_star_column * F.col("progress_sd"))
    return caps, z_star


def adjust_extreme_negatives(progressed: DataFrame, caps: DataFrame) -> DataFrame:
    """Add `adjusted_progress` and `capped`: scores below their group's cap are raised to it.

    z < z* is the same as progress < cap when the group's SD is positive; a group with a
    null or zero SD (one pupil, or identical scores) is never capped.
    """
    joined = progressed.join(
        caps.select("subject", "prior_attainment_group", "cap"), on=["subject", "prior_attainment_group"], how="left"
    )
    capped = F.col("progress").isNotNull() & F.col("cap").isNotNull() & (F.col("progress") < F.col("cap"))
    return joined.withColumn("capped", F.coalesce(capped, F.lit(False))).withColumn(
        "adjusted_progress", F.when(F.col("capped"), F.col("cap")).otherwise(F.col("progress"))
    ).drop("cap")


def national_progress_sd(adjusted: DataFrame) -> DataFrame:
    """One row per subject: the SD of in_national pupils' adjusted progress (for intervals)."""
    return (
        adjusted.where(F.col("in_national") & F.col("adjusted_progress").isNotNull())
        .groupBy("subject")
        .agg(F.stddev_samp("adjusted_progress").alias("national_sd"))
    )


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
        .agg(F.count(F.lit(1)).cast("int").alias("n"), F.mean("adjusted_progress").alias("score"))
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


def progress_measures(long: DataFrame, rules: ProgressRules, published: DataFrame | None = None) -> dict[str, object]:
    """Run rules 1-5 on a long pupil frame.

    Args:
        long: one row per pupil per subject (columns in the module docstring).
        rules: the key stage's rules.
        published: optional published estimates (subject, prior_attainment_group,
            estimate, and national_sd per subject) to apply instead of computing them.

    Returns:
        "estimates" (per subject and group: n, estimate, outcome_sd, progress_mean,
        progress_sd, cap), "pupils" (the long frame with estimate, progress, capped,
        adjusted_progress), "schools" (per school and subject), and "z_star".
    """
    estimates = national_estimates(long, rules.estimate_method) if published is None else published
    progressed = pupil_progress(long, estimates, rules)
    caps, z_star = extreme_negative_caps(progressed, rules.extreme_share)
    adjusted = adjust_extreme_negatives(progressed, caps)
    if published is not None and "national_sd" in published.columns:
        national_sd = published.select("subject", "national_sd").distinct()
    else:
        national_sd = national_progress_sd(adjusted)
    schools = school_scores(adjusted, national_sd, rules)
    estimates_out = estimates.join(caps, on=["subject", "prior_attainment_group"], how="left")
    return {"estimates": estimates_out, "pupils": adjusted, "schools": schools, "z_star": z_star}


def _data_columns(schema) -> list[str]:
    return [name for name in schema.names if name not in PARTITION_NAMES]


def pupil_progress_rows(pupils: DataFrame) -> DataFrame:
    """The `pupil_progress` columns (partition columns are added by the writer).

    `pupils` is progress_measures()["pupils"] with an `exclusion_reason` column.
    """
    return pupils.select(*_data_columns(PUPIL_PROGRESS))


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
