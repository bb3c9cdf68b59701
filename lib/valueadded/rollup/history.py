"""Earlier years: trends of every figure, read from the output tables when present.

A release reads the partitions of academic_year - 1 and - 2 of its key stage and of the
configured data stage (conf/rollup: trends.history_data_stage, validated by default: the
final figures) from `unsuppressed_measures`, and last year's `identified_schools`.
Absent partitions are simply absent: the trend columns stay null.

- last_year_score: the same figure (level, unit, subgroup, measure) last year;
- change_from_last_year = score - last_year_score;
- three_year_average: sum(weighted_pupils x score) / sum(weighted_pupils) over this year
  and the two before, when all three have the figure (pupil-weighted, as DfE's 3-year
  averages).
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from valueadded.io.delta_store import TableStore
from valueadded.io.schemas import TableSchema
from valueadded.rollup.aggregate import FIGURE_KEY

TREND_COLUMNS = ("last_year_n", "last_year_score", "change_from_last_year", "three_year_average", "three_year_min_n")


def earlier_partition(store: TableStore, schema: TableSchema, year: int, key_stage: str, data_stage: str) -> DataFrame | None:
    """The table's (year, key stage, data stage) partition, or None when it is not there."""
    if store.version(schema) is None:
        return None
    if store.backend == "delta-rs":
        from deltalake import DeltaTable

        filters = [("academic_year", "=", str(int(year))), ("key_stage", "=", key_stage), ("data_stage", "=", data_stage)]
        if not DeltaTable(str(store.path(schema))).file_uris(partition_filters=filters):
            return None
        return store.read(schema, year, key_stage, data_stage)
    frame = store.read(schema, year, key_stage, data_stage)
    return None if frame.isEmpty() else frame


def with_trends(figures: DataFrame, last_year: DataFrame | None, two_years_ago: DataFrame | None) -> DataFrame:
    """Add the trend columns (TREND_COLUMNS) to figures keyed by FIGURE_KEY.

    Args:
        figures: this year's figures with n, weighted_pupils and score.
        last_year, two_years_ago: the earlier years' unsuppressed_measures partitions, or None.
    """
    if last_year is None:
        return figures.withColumns({
            "last_year_n": F.lit(None).cast("int"), "last_year_score": F.lit(None).cast("double"),
            "change_from_last_year": F.lit(None).cast("double"), "three_year_average": F.lit(None).cast("double"),
            "three_year_min_n": F.lit(None).cast("int"),
        })
    joined = figures.join(
        last_year.select(*FIGURE_KEY, F.col("n").alias("last_year_n"), F.col("weighted_pupils").alias("_w1"), F.col("score").alias("last_year_score")),
        on=list(FIGURE_KEY), how="left",
    )
    if two_years_ago is None:
        joined = joined.withColumns({"_n2": F.lit(None).cast("int"), "_w2": F.lit(None).cast("double"), "_s2": F.lit(None).cast("double")})
    else:
        joined = joined.join(
            two_years_ago.select(*FIGURE_KEY, F.col("n").alias("_n2"), F.col("weighted_pupils").alias("_w2"), F.col("score").alias("_s2")),
            on=list(FIGURE_KEY), how="left",
        )
    all_three = F.col("score").isNotNull() & F.col("last_year_score").isNotNull() & F.col("_s2").isNotNull()
    weighted = F.col("weighted_pupils") * F.col("score") + F.col("_w1") * F.col("last_year_score") + F.col("_w2") * F.col("_s2")
    return (
        joined.withColumn("change_from_last_year", F.col("score") - F.col("last_year_score"))
        .withColumn("three_year_average", F.when(all_three, weighted / (F.col("weighted_pupils") + F.col("_w1") + F.col("_w2"))))
        .withColumn("three_year_min_n", F.when(all_three, F.least(F.col("n"), F.col("last_year_n"), F.col("_n2"))))
        .drop("_w1", "_n2", "_w2", "_s2")
    )
