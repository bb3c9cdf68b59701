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

Each earlier year's figures are marked with whether that year's published tables
withheld them: the suppression rule (valueadded.rollup.suppression.withheld_reason)
applied to that year's whole partition, so secondary suppression is redone too. A trend
that uses a withheld figure is itself withheld (`earlier_year_withheld`), so a change or
an average cannot give back a figure that was withheld when it was published.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from valueadded.io.delta_store import TableStore
from valueadded.io.schemas import TableSchema
from valueadded.rollup.aggregate import FIGURE_KEY
from valueadded.rollup.suppression import withheld_reason

TREND_COLUMNS = (
    "last_year_n", "last_year_score", "change_from_last_year", "three_year_average", "three_year_min_n", "earlier_year_withheld",
)


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


def _earlier(frame: DataFrame, min_pupils: int, suffix: str) -> DataFrame:
    """FIGURE_KEY, n, weighted_pupils, score and withheld of an earlier year, columns suffixed."""
    marked = withheld_reason(frame, min_pupils)
    return marked.select(
        *FIGURE_KEY, *(F.col(c).alias(f"{c}{suffix}") for c in ("n", "weighted_pupils", "score", "suppressed"))
    )


def with_trends(figures: DataFrame, last_year: DataFrame | None, two_years_ago: DataFrame | None, min_pupils: int) -> DataFrame:
    """Add the trend columns (TREND_COLUMNS) to figures keyed by FIGURE_KEY.

    Args:
        figures: this year's figures with n, weighted_pupils and score.
        last_year, two_years_ago: the earlier years' unsuppressed_measures partitions, or None.
        min_pupils: the suppression threshold, to tell which earlier figures were withheld.
    """
    if last_year is None:
        return figures.withColumns({
            "last_year_n": F.lit(None).cast("int"), "last_year_score": F.lit(None).cast("double"),
            "change_from_last_year": F.lit(None).cast("double"), "three_year_average": F.lit(None).cast("double"),
            "three_year_min_n": F.lit(None).cast("int"), "earlier_year_withheld": F.lit(False),
        })
    joined = figures.join(_earlier(last_year, min_pupils, "_1"), on=list(FIGURE_KEY), how="left")
    if two_years_ago is None:
        joined = joined.withColumns({
            "n_2": F.lit(None).cast("int"), "weighted_pupils_2": F.lit(None).cast("double"),
            "score_2": F.lit(None).cast("double"), "suppressed_2": F.lit(None).cast("boolean"),
        })
    else:
        joined = joined.join(_earlier(two_years_ago, min_pupils, "_2"), on=list(FIGURE_KEY), how="left")
    all_three = F.col("score").isNotNull() & F.col("score_1").isNotNull() & F.col("score_2").isNotNull()
    weighted = (F.col("weighted_pupils") * F.col("score") + F.col("weighted_pupils_1") * F.col("score_1")
                + F.col("weighted_pupils_2") * F.col("score_2"))
    # The trend columns go together: withheld when a year any of them uses was withheld.
    earlier_withheld = F.coalesce(F.col("suppressed_1"), F.lit(False)) | (all_three & F.coalesce(F.col("suppressed_2"), F.lit(False)))
    return (
        joined.withColumn("last_year_n", F.col("n_1"))
        .withColumn("last_year_score", F.col("score_1"))
        .withColumn("change_from_last_year", F.col("score") - F.col("score_1"))
        .withColumn("three_year_average", F.when(all_three, weighted / (F.col("weighted_pupils") + F.col("weighted_pupils_1") + F.col("weighted_pupils_2"))))
        .withColumn("three_year_min_n", F.when(all_three, F.least(F.col("n"), F.col("n_1"), F.col("n_2"))))
        .withColumn("earlier_year_withheld", earlier_withheld)
        .drop(*(f"{c}_{i}" for c in ("n", "weighted_pupils", "score", "suppressed") for i in (1, 2)))
    )
