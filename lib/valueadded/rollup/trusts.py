"""Which schools count towards their trust's figures, and with what weight (SPEC 2.4).

The rule, exactly (conf/rollup: trusts; documented in docs/tables.md, trust_measures):

1. A school's trust is the trust of its membership spell that contains 31 August of the
   academic year (the same trust as pupil_results.trust_id). Spells do not overlap
   (intake sets an overlapping spell aside).
2. Full academic years in the trust = the release year - the first academic year the
   spell covers whole: the spell's join year if it joined on or before 1 September,
   else the next year. For 2024 (2023/24): joined 1 September 2021 -> 3 years; joined
   2 September 2021 -> 2 years.
3. The school counts (in_trust_figure) when it is state-funded mainstream and has at
   least min_full_years full years; it then carries the time-in-trust weight of its full
   years (the last configured weight at or below them).
4. A trust has a figure for a measure when at least min_schools counted schools have
   pupils in it (valueadded.rollup.aggregate).
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from valueadded.rollup.config import TrustRules

MAINSTREAM, STATE_FUNDED = "mainstream", "state_funded"


def first_full_year(join_date: Column) -> Column:
    """Calendar year of the 1 September that starts the spell's first whole academic year."""
    after_first_september = (F.month(join_date) > 9) | ((F.month(join_date) == 9) & (F.dayofmonth(join_date) > 1))
    return F.year(join_date) + F.when(after_first_september, F.lit(1)).otherwise(F.lit(0))


def time_in_trust_weight(full_years: Column, rules: TrustRules) -> Column:
    """The configured weight for `full_years` (null below the first configured years)."""
    weight = F.lit(None).cast("double")
    for years, value in rules.time_in_trust_weights:  # ascending: the highest matching bound wins
        weight = F.when(full_years >= years, F.lit(float(value))).otherwise(weight)
    return weight


def school_trusts(trust_membership: DataFrame, schools: DataFrame, year: int, rules: TrustRules) -> DataFrame:
    """One row per school in a trust on 31 August of `year`.

    Columns: school_id, trust_id, trust_name, join_date, full_years_in_trust,
    in_trust_figure, trust_weight (null when the school does not count).
    """
    year_end = F.lit(f"{year}-08-31").cast("date")
    current = trust_membership.where(
        (F.col("join_date") <= year_end) & (F.col("leave_date").isNull() | (F.col("leave_date") > year_end))
    )
    full_years = (F.lit(year) - first_full_year(F.col("join_date"))).cast("int")
    kind = schools.select("school_id", "provision", "sector")
    counts = (
        (F.col("provision") == MAINSTREAM) & (F.col("sector") == STATE_FUNDED) & (F.col("full_years_in_trust") >= rules.min_full_years)
    )
    return (
        current.select("school_id", "trust_id", "trust_name", "join_date", full_years.alias("full_years_in_trust"))
        .join(kind, on="school_id", how="inner")
        .withColumn("in_trust_figure", F.coalesce(counts, F.lit(False)))
        .withColumn("trust_weight", F.when(F.col("in_trust_figure"), time_in_trust_weight(F.col("full_years_in_trust"), rules)))
        .select("school_id", "trust_id", "trust_name", "join_date", "full_years_in_trust", "in_trust_figure", "trust_weight")
    )


def trust_names(school_trusts: DataFrame) -> DataFrame:
    """One row per trust with a school on 31 August: trust_id, trust_name (of the current spells)."""
    return school_trusts.where(F.col("trust_id").isNotNull()).groupBy("trust_id").agg(F.max("trust_name").alias("trust_name"))
