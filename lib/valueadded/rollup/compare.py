"""Comparisons for school figures (seed 002): within the trust, among similar schools, quadrants.

Only shown (not suppressed) figures take part, so a rank never reveals a withheld figure.

- Rank in trust: among the schools of the school's trust (on 31 August) with a shown
  figure for the measure; 1 = highest; tied figures share a rank.
- Similar schools: schools of the same phase and provision whose key stage cohort
  (included pupils) falls in the same size band and whose share of disadvantaged pupils
  falls in the same band (conf/rollup: comparisons.similar_schools). Group label, e.g.
  `primary|mainstream|size 30-44|disadvantaged 20-30%`; rank among the group's shown
  figures, 1 = highest.
- Quadrant: a progress (or CVA) figure and its configured attainment figure, each
  "high" when at or above the national figure (`national_score`).
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from valueadded.rollup.config import YES, SimilarSchools


def ranks_in_trust(school_rows: DataFrame, trusts: DataFrame) -> DataFrame:
    """school_id, measure, rank_in_trust, schools_ranked_in_trust for schools in a trust.

    Args:
        school_rows: school figures with school_id, measure, score, suppressed.
        trusts: school_id, trust_id (schools in a trust).
    """
    shown = school_rows.where(~F.col("suppressed") & F.col("score").isNotNull()).join(
        F.broadcast(trusts.select("school_id", "trust_id")), on="school_id", how="inner"
    )
    trust = Window.partitionBy("trust_id", "measure")
    return shown.select(
        "school_id", "measure",
        F.rank().over(trust.orderBy(F.col("score").desc())).cast("int").alias("rank_in_trust"),
        F.count(F.lit(1)).over(trust).cast("int").alias("schools_ranked_in_trust"),
    )


def _band_label(value: Column, bounds: tuple[float, ...], unit: str, fmt) -> Column:
    """'<low>-<high><unit>' for the band of `value` (bounds inclusive lower limits), '<top>+<unit>' above."""
    label = F.lit(None).cast("string")
    for index, low in enumerate(bounds):
        text = f"{fmt(low)}+{unit}" if index == len(bounds) - 1 else f"{fmt(low)}-{fmt(bounds[index + 1])}{unit}"
        label = F.when(value >= F.lit(low), F.lit(text)).otherwise(label)
    return label


def similar_school_groups(pupils: DataFrame, schools: DataFrame, key_stage: str, rules: SimilarSchools) -> DataFrame:
    """school_id, similar_schools_group for every school with an included pupil.

    Args:
        pupils: one row per pupil: school_id, included, disadvantaged ("yes" or "no", as
            in pupil_measures).
        schools: school_id, phase, provision.
    """
    disadvantaged = (F.col("disadvantaged") == YES).cast("int")
    cohorts = pupils.where(F.col("included")).groupBy("school_id").agg(
        F.count(F.lit(1)).alias("_cohort"), F.sum(disadvantaged).alias("_disadvantaged")
    )
    percent = F.lit(100.0) * F.col("_disadvantaged") / F.col("_cohort")
    size = _band_label(F.col("_cohort"), rules.cohort_size_lower_bounds[key_stage], "", lambda b: str(int(b)))
    # Upper limits are exclusive: "20-30%" is 20% up to (not including) 30%.
    share = _band_label(percent, rules.disadvantaged_percent_lower_bounds, "%", lambda b: f"{b:g}")
    group = F.concat_ws("|", F.col("phase"), F.col("provision"), F.concat(F.lit("size "), size), F.concat(F.lit("disadvantaged "), share))
    return cohorts.join(F.broadcast(schools.select("school_id", "phase", "provision")), on="school_id", how="inner").select(
        "school_id", group.alias("similar_schools_group")
    )


def similar_school_ranks(school_rows: DataFrame, groups: DataFrame) -> DataFrame:
    """school_id, measure, similar_schools_rank, similar_schools_count over shown figures."""
    shown = school_rows.where(~F.col("suppressed") & F.col("score").isNotNull()).join(groups, on="school_id", how="inner")
    group = Window.partitionBy("similar_schools_group", "measure")
    return shown.select(
        "school_id", "measure",
        F.rank().over(group.orderBy(F.col("score").desc())).cast("int").alias("similar_schools_rank"),
        F.count(F.lit(1)).over(group).cast("int").alias("similar_schools_count"),
    )


def quadrants(school_rows: DataFrame, pairs: dict[str, str]) -> DataFrame:
    """school_id, measure, quadrant, quadrant_attainment_measure for the configured progress measures.

    Args:
        school_rows: school figures with school_id, measure, score, national_score, suppressed.
        pairs: progress (or CVA) measure -> attainment measure.
    """
    if not pairs:
        return school_rows.sparkSession.createDataFrame(
            [], "school_id string, measure string, quadrant string, quadrant_attainment_measure string"
        )
    shown = school_rows.where(~F.col("suppressed") & F.col("score").isNotNull() & F.col("national_score").isNotNull())
    high = F.col("score") >= F.col("national_score")
    progress = shown.where(F.col("measure").isin(list(pairs))).select("school_id", "measure", high.alias("high"))
    attainment = shown.where(F.col("measure").isin(sorted(set(pairs.values())))).select(
        "school_id", F.col("measure").alias("quadrant_attainment_measure"), high.alias("high_attainment")
    )
    mapping = school_rows.sparkSession.createDataFrame(sorted(pairs.items()), "measure string, quadrant_attainment_measure string")
    joined = progress.join(F.broadcast(mapping), on="measure", how="inner").join(
        attainment, on=["school_id", "quadrant_attainment_measure"], how="inner"
    )
    label = F.concat(
        F.when(F.col("high_attainment"), F.lit("high")).otherwise(F.lit("low")), F.lit("_attainment_"),
        F.when(F.col("high"), F.lit("high")).otherwise(F.lit("low")), F.lit("_progress"),
    )
    return joined.select("school_id", "measure", label.alias("quadrant"), "quadrant_attainment_measure")
