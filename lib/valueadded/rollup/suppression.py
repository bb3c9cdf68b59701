"""Suppression: no published figure rests on fewer than the minimum pupils (SPEC 2.4).

Every table dashboards read (audience "published") withholds a row's figures, its
TableSchema.suppressible columns, when:

- `below_minimum_pupils`: the figure rests on fewer than `suppression.min_pupils` (6)
  pupils; or
- `secondary`: a subgroup figure that would let a withheld one be worked out. The values
  of a subgroup dimension (e.g. sen none / support / plan) split the unit's pupils, so
  the unit's all-pupil figure and the shown values give away the withheld values taken
  together. When the withheld values of a unit, measure and dimension cover between 1
  and min_pupils - 1 pupils, the shown value with the fewest pupils (then the first by
  name) is withheld too; it has at least min_pupils pupils, so the withheld values
  then cover at least min_pupils pupils.

Trend columns are also withheld, with `trend_suppression_reason`, when a year they use
was withheld in that year's tables (this rule applied to that year's figures: fewer than
the minimum pupils, or secondary), so an earlier year's withheld figure cannot be
recovered from a change or an average. The row stays (suppressed = true and a reason),
so a dashboard can say why there is no figure. Differences between levels (a local
authority's figure against its schools') are not protected: a school or authority of
fewer than the minimum pupils is withheld at its own level only. The restricted tables
(school_scores, unsuppressed_measures, national_estimates_unsuppressed) keep every value.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from valueadded.io.schemas import TREND_SUPPRESSIBLE

BELOW_MINIMUM = "below_minimum_pupils"
SECONDARY = "secondary"
EARLIER_YEAR_WITHHELD = "withheld_in_an_earlier_year"


def withheld_reason(figures: DataFrame, min_pupils: int, unit: tuple[str, ...] = ("level", "unit_id")) -> DataFrame:
    """Add suppression_reason and suppressed (the rule above) to unsuppressed figures.

    Args:
        figures: one row per unit, subgroup, subgroup_value and measure, with n.
        unit: the columns naming the unit: level and unit_id in figures; school_id in
            school cells (valueadded.rollup.aggregate.marked_school_cells), which the roll-up
            marks as it builds them, where the aggregation has put each school's cells
            together: the rule's window then needs no shuffle of its own.
    """
    minimum = F.lit(min_pupils)
    primary = F.col("n") < minimum
    # Shown values first, fewest pupils first: the value secondary suppression takes. One
    # ordering for both windows, so Spark sorts the rows once.
    dimension = Window.partitionBy(*unit, "measure", "subgroup").orderBy(primary.asc(), F.col("n").asc(), F.col("subgroup_value").asc())
    whole = dimension.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
    withheld_pupils = F.sum(F.when(primary, F.col("n")).otherwise(F.lit(0))).over(whole)
    smallest_shown = F.row_number().over(dimension) == 1
    secondary = (F.col("subgroup") != "all") & ~primary & (withheld_pupils > 0) & (withheld_pupils < minimum) & smallest_shown
    reason = F.when(primary, F.lit(BELOW_MINIMUM)).when(secondary, F.lit(SECONDARY))
    return figures.withColumn("suppression_reason", reason).withColumn("suppressed", F.col("suppression_reason").isNotNull())


def with_suppression(figures: DataFrame, min_pupils: int) -> DataFrame:
    """Add suppression_reason, suppressed and trend_suppression_reason to unsuppressed figures.

    Args:
        figures: as for withheld_reason(), with earlier_year_withheld (history.with_trends()).
    """
    return with_trend_suppression(withheld_reason(figures, min_pupils))


def with_trend_suppression(figures: DataFrame) -> DataFrame:
    """Add trend_suppression_reason to figures marked by withheld_reason() and with earlier_year_withheld."""
    return figures.withColumn(
        "trend_suppression_reason", F.when(~F.col("suppressed") & F.col("earlier_year_withheld"), F.lit(EARLIER_YEAR_WITHHELD))
    )


def withheld(frame: DataFrame, columns: tuple[str, ...], condition: Column) -> DataFrame:
    """The frame with `columns` set to null (same type) where `condition` holds."""
    types = dict(frame.dtypes)
    return frame.withColumns({name: F.when(~condition, F.col(name)).cast(types[name]) for name in columns})


def shown(frame: DataFrame, suppressible: tuple[str, ...]) -> DataFrame:
    """Apply with_suppression()'s decisions: withhold figures of suppressed rows and bad trends.

    Trend columns in `suppressible` are withheld on suppressed rows and on rows with a
    trend_suppression_reason; the others on suppressed rows.
    """
    trends = tuple(c for c in suppressible if c in TREND_SUPPRESSIBLE)
    frame = withheld(frame, suppressible, F.col("suppressed"))
    return withheld(frame, trends, F.col("trend_suppression_reason").isNotNull())


def national_estimate_suppression(estimates: DataFrame, group_pupils: DataFrame | None, min_pupils: int) -> DataFrame:
    """The published national estimates: figures of groups of fewer than the minimum pupils withheld.

    Args:
        estimates: the national_estimates_unsuppressed columns (no partition columns).
        group_pupils: for published (applied) estimates, whose `n` is null: subject,
            prior_attainment_group, pupils (this run's pupils behind the caps); None when
            the estimates were computed (their `n` counts the pupils).

    The estimate of an applied table is the publisher's and stays; the caps, progress
    mean and SD come from this run's pupils and follow the rule.
    """
    minimum = F.lit(min_pupils)
    if group_pupils is None:
        small = F.coalesce(F.col("n"), minimum) < minimum
        figures = ("n", "estimate", "outcome_sd", "progress_mean", "progress_sd", "cap")
        marked = estimates.withColumn("_small", small)
    else:
        marked = estimates.join(
            F.broadcast(group_pupils), on=["subject", "prior_attainment_group"], how="left"
        ).withColumn("_small", F.coalesce(F.col("pupils"), F.lit(0)) < minimum).drop("pupils")
        figures = ("progress_mean", "progress_sd", "cap")
    marked = marked.withColumn("suppression_reason", F.when(F.col("_small"), F.lit(BELOW_MINIMUM))).withColumn(
        "suppressed", F.col("_small")
    )
    return withheld(marked, figures, F.col("suppressed")).drop("_small")
