"""Identifying schools with a low-performing subgroup, and their exit (seed 003).

On the key stage's chosen measure (conf/rollup: identification):

1. Eligible subgroups: every school's configured subgroups (e.g. disadvantaged yes, sen
   support) with at least `min_pupils` pupils in the measure, pooled nationally.
2. rank = 1 + the number of eligible subgroups with a strictly lower score (tied scores
   share the lower rank); percentile = 100 x rank / number eligible.
3. A school is identified for a subgroup when its percentile <= lowest_percent (10).
4. When last year's identified_schools partition is present, a school identified for a
   subgroup last year stays identified (`continuing`) until the subgroup's percentile is
   above exit_above_percent (20): then `exited`. If the subgroup is not eligible this
   year (too few pupils), it cannot show it has risen: `continuing_not_assessed`.

Figures are shown as in subgroup_measures: a figure withheld there (suppressed) is
withheld here too, with its rank and percentile; the identification still stands.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from valueadded.rollup.config import IdentificationRules
from valueadded.rollup.suppression import withheld

KEY = ("school_id", "measure", "subgroup", "subgroup_value")
IDENTIFIED, CONTINUING, EXITED, NOT_ASSESSED = "identified", "continuing", "exited", "continuing_not_assessed"


def chosen_subgroups(frame: DataFrame, rules: IdentificationRules) -> DataFrame:
    """Rows of the configured subgroups (frame has subgroup and subgroup_value)."""
    condition = F.lit(False)
    for dimension, values in sorted(rules.subgroups.items()):
        condition = condition | ((F.col("subgroup") == dimension) & F.col("subgroup_value").isin(list(values)))
    return frame.where(condition)


def ranked_subgroups(school_subgroups: DataFrame, rules: IdentificationRules, measure: str) -> DataFrame:
    """The configured school subgroups of the measure, with eligibility, rank and percentile.

    Args:
        school_subgroups: school-level subgroup figures (unit_id = school, subgroup,
            subgroup_value, measure, n, score, suppressed, suppression_reason).

    Returns:
        KEY columns, n, score, suppressed, suppression_reason, eligible, rank,
        eligible_subgroups, percentile, lowest_cutoff_score, exit_cutoff_score.
    """
    candidates = chosen_subgroups(school_subgroups.where(F.col("measure") == measure), rules).withColumnRenamed("unit_id", "school_id")
    eligible = (F.col("n") >= rules.min_pupils) & F.col("score").isNotNull()
    marked = candidates.withColumn("eligible", eligible)
    everyone = Window.partitionBy(F.col("eligible"))  # the eligible rows form one national group
    ranked = marked.withColumn(
        "rank", F.when(F.col("eligible"), F.rank().over(everyone.orderBy(F.col("score").asc())).cast("int"))
    ).withColumn("eligible_subgroups", F.sum(F.col("eligible").cast("int")).over(Window.partitionBy()).cast("int"))
    ranked = ranked.withColumn("percentile", F.lit(100.0) * F.col("rank") / F.col("eligible_subgroups"))
    # Cut-offs are the highest *shown* scores within the percentiles: a withheld figure never leaks.
    national = Window.partitionBy()
    shown = ~F.col("suppressed")
    return ranked.withColumn(
        "lowest_cutoff_score", F.max(F.when((F.col("percentile") <= rules.lowest_percent) & shown, F.col("score"))).over(national)
    ).withColumn(
        "exit_cutoff_score", F.max(F.when((F.col("percentile") <= rules.exit_above_percent) & shown, F.col("score"))).over(national)
    )


def identified_schools(ranked: DataFrame, last_year: DataFrame | None, rules: IdentificationRules, measure: str) -> DataFrame:
    """The identified_schools rows (data columns) from ranked_subgroups() and last year's table.

    Args:
        ranked: ranked_subgroups() output.
        last_year: last year's identified_schools partition, or None when absent. Only
            its rows of `measure` count: a school identified on another measure is not
            carried over.
        measure: the measure subgroups are compared on this year.
    """
    lowest = F.col("eligible") & (F.col("percentile") <= rules.lowest_percent)
    if last_year is None:
        rows = ranked.withColumn("identified_last_year", F.lit(None).cast("boolean")).withColumn(
            "status", F.when(lowest, F.lit(IDENTIFIED))
        )
    else:
        previous = last_year.where(F.col("identified") & (F.col("measure") == measure)).select(*KEY).distinct().withColumn("_before", F.lit(True))
        rows = ranked.join(previous, on=list(KEY), how="full_outer")
        before = F.coalesce(F.col("_before"), F.lit(False))
        assessed = F.coalesce(F.col("eligible"), F.lit(False))
        status = (
            F.when(before & ~assessed, F.lit(NOT_ASSESSED))
            .when(before & (F.col("percentile") > rules.exit_above_percent), F.lit(EXITED))
            .when(before, F.lit(CONTINUING))
            .when(lowest, F.lit(IDENTIFIED))
        )
        # Rows only last year have no figure this year: fill the national columns.
        national = Window.partitionBy()
        rows = rows.withColumns({
            "identified_last_year": before,
            "status": status,
            "eligible_subgroups": F.max("eligible_subgroups").over(national),
            "lowest_cutoff_score": F.max("lowest_cutoff_score").over(national),
            "exit_cutoff_score": F.max("exit_cutoff_score").over(national),
            "suppressed": F.coalesce(F.col("suppressed"), F.lit(False)),
        })
    rows = rows.where(F.col("status").isNotNull()).withColumn("identified", F.col("status") != EXITED)
    rows = withheld(rows, ("n", "score", "rank", "percentile"), F.col("suppressed"))
    return rows.select(
        *KEY, "n", "score", "rank", F.coalesce(F.col("eligible_subgroups"), F.lit(0)).alias("eligible_subgroups"),
        "percentile", "lowest_cutoff_score", "exit_cutoff_score", "identified_last_year", "status", "identified",
        "suppressed", "suppression_reason",
    )
