"""Comparisons for school figures (seed 002): within the trust, among similar schools, quadrants.

Only shown (not suppressed) figures take part, so a rank never reveals a withheld figure.

- Rank in trust: among the schools of the school's trust (on 31 August) with a shown
  figure for the measure; 1 = highest; tied figures share a rank.
- Similar schools: schools of the same phase and provision whose key stage cohort
  (included pupils) falls in the same size band and whose share of disadvantaged pupils
  falls in the same band (conf/rollup: comparisons.similar_schools). Group label, e.g.
  `primary|mainstream|size 30-45|disadvantaged 20-30%` (upper limits exclusive); rank among the group's shown
  figures, 1 = highest.
- Quadrant: a progress (or CVA) figure and its configured attainment figure, each
  "high" when at or above the national figure (`national_score`).
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from valueadded.rollup.config import YES, SimilarSchools


def _shown() -> Column:
    return ~F.col("suppressed") & F.col("score").isNotNull()


def with_ranks(school_rows: DataFrame, rankings: list[tuple[str, str, str]]) -> DataFrame:
    """Add, for each (group, rank, count) of `rankings`, `rank` (1 = highest; ties share a
    rank) and `count` among the rows of the same `group` and measure with a shown figure;
    null on other rows and without a group.

    The ranks are computed on the few columns they need and joined back by school and
    measure (one row each): the windows then sort those columns only, not every column of
    the school figures.

    Args:
        school_rows: school figures, one row per school_id and measure, with each `group`,
            score and suppressed.
    """
    groups = [group for group, _, _ in rankings]
    narrow = school_rows.select("school_id", "measure", "score", _shown().alias("_shown"), *groups)
    columns = []
    for group, rank, count in rankings:
        ranked = F.col("_shown") & F.col(group).isNotNull()
        window = Window.partitionBy(group, "measure", ranked)
        columns += [
            F.when(ranked, F.rank().over(window.orderBy(F.col("score").desc()))).cast("int").alias(rank),
            F.when(ranked, F.count(F.lit(1)).over(window)).cast("int").alias(count),
        ]
    ranks = narrow.select("school_id", "measure", *columns)
    joined = school_rows.join(F.broadcast(ranks), on=["school_id", "measure"], how="left")
    return joined.select(*school_rows.columns, *[name for _, rank, count in rankings for name in (rank, count)])


def _band_label(value: Column, bounds: tuple[float, ...], unit: str, fmt) -> Column:
    """'<low>-<high><unit>' for the band of `value` (bounds inclusive lower limits), '<top><unit>+' above."""
    label = F.lit(None).cast("string")
    for index, low in enumerate(bounds):
        text = f"{fmt(low)}{unit}+" if index == len(bounds) - 1 else f"{fmt(low)}-{fmt(bounds[index + 1])}{unit}"
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


def with_quadrant(school_rows: DataFrame, pairs: dict[str, str]) -> DataFrame:
    """Add quadrant and quadrant_attainment_measure to the configured progress (and CVA) rows.

    Args:
        school_rows: school figures (school_id, measure, score, national_score, suppressed).
        pairs: progress (or CVA) measure -> attainment measure.
    """
    attainment_of = F.lit(None).cast("string")
    for progress, attainment in sorted(pairs.items()):
        attainment_of = F.when(F.col("measure") == progress, F.lit(attainment)).otherwise(attainment_of)
    high = F.when(_shown() & F.col("national_score").isNotNull(), F.col("score") >= F.col("national_score"))
    # Every shown attainment figure of the school: measure -> at or above the national figure.
    attainment_high = F.map_from_entries(F.collect_list(
        F.when(F.col("measure").isin(sorted(set(pairs.values()))) & high.isNotNull(), F.struct(F.col("measure"), high))
    ).over(Window.partitionBy("school_id")))
    marked = school_rows.withColumn("_pair", attainment_of).withColumn("_high", high).withColumn(
        "_high_attainment", attainment_high[F.col("_pair")]
    )
    label = F.concat(
        F.when(F.col("_high_attainment"), F.lit("high")).otherwise(F.lit("low")), F.lit("_attainment_"),
        F.when(F.col("_high"), F.lit("high")).otherwise(F.lit("low")), F.lit("_progress"),
    )
    known = F.col("_pair").isNotNull() & F.col("_high").isNotNull() & F.col("_high_attainment").isNotNull()
    return (
        marked.withColumn("quadrant", F.when(known, label))
        .withColumn("quadrant_attainment_measure", F.when(known, F.col("_pair")))
        .drop("_pair", "_high", "_high_attainment")
    )
