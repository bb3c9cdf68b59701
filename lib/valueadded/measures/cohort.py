"""The pupil table: every accepted pupil, with school context and inclusion.

One row per pupil of the key stage cohort who passed validation. Pupil-level inclusion
is decided here, before any measure, in this order (the first reason that applies is
recorded):

1. `removed_at_checking`: the checking exercise took the pupil off the school's roll
   (validated stage only).
2. `added_at_checking`: the pupil was added at the checking exercise, so is not in the
   unvalidated data (unvalidated stage only).
3. `discounted`: a recent arrival from overseas with English as an additional language
   from a country where English is not an official language, first admitted to an
   English school on or after 1 September two years before the end of the key stage
   (the start of Year 5 for KS2, Year 10 for KS4). Counted in unvalidated data,
   removed in validated data (SPEC 2.2).
4. `independent_school`: independent schools are outside the measures.

Measure-level rules (no prior attainment, absent and other result codes) are applied by
each measure on top of this flag, subject by subject.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from valueadded.io.schemas import CVA_PUPIL_COLUMNS, PUPIL_RESULTS, SPARK_TYPES

DISCOUNT_WINDOW_YEARS = 2  # first admitted on/after 1 Sep of (year - 2): the start of Year 5 / Year 10


def age_in_months(date_of_birth: Column) -> Column:
    """Months older than an August-born pupil of the same year group (September = 11)."""
    return F.pmod(F.lit(8) - F.month(date_of_birth), F.lit(12)).cast("int")


def discountable(year: int) -> Column:
    window_start = F.lit(f"{year - DISCOUNT_WINDOW_YEARS}-09-01").cast("date")
    return (
        F.col("arrived_from_overseas")
        & F.col("eal")
        & (F.coalesce(F.col("country_english_official"), F.lit(True)) == F.lit(False))
        & (F.col("first_admission_date") >= window_start)
    )


def trust_at_year_end(trust_membership: DataFrame, year: int) -> DataFrame:
    """One row per school that is in a trust on 31 August of the academic year."""
    year_end = F.lit(f"{year}-08-31").cast("date")
    current = trust_membership.where(
        (F.col("join_date") <= year_end) & (F.col("leave_date").isNull() | (F.col("leave_date") > year_end))
    )
    return current.groupBy("school_id").agg(F.min("trust_id").alias("trust_id"))


def build_pupil_table(
    pupils: DataFrame,
    schools: DataFrame,
    trust_membership: DataFrame,
    amendments: DataFrame,
    year: int,
    key_stage: str,
    data_stage: str,
) -> DataFrame:
    """Join pupils to their school and trust and decide pupil-level inclusion.

    Args:
        pupils: accepted pupils of the key stage with their results (one row per pupil).
        schools: accepted schools (one row per school).
        trust_membership: accepted trust spells.
        amendments: accepted amendments of the key stage.
        year, key_stage, data_stage: the partition this run writes.

    Returns:
        One row per pupil: the `pupil_results` columns, plus every results column
        (for the measures), in the contract's order first.
    """
    actions = amendments.where(F.col("action").isin("remove", "add")).groupBy("pupil_id").agg(
        F.max(F.col("action") == "remove").alias("_removed"), F.max(F.col("action") == "add").alias("_added")
    )
    school_context = schools.select(
        "school_id",
        "la_code",
        "region_code",
        F.col("provision").alias("school_provision"),
        F.col("sector").alias("school_sector"),
    )
    validated = data_stage == "validated"
    reason = (
        F.when(F.lit(validated) & F.coalesce(F.col("_removed"), F.lit(False)), F.lit("removed_at_checking"))
        .when(F.lit(not validated) & F.coalesce(F.col("_added"), F.lit(False)), F.lit("added_at_checking"))
        .when(F.lit(validated) & F.col("discountable"), F.lit("discounted"))
        .when(F.col("school_sector") == "independent", F.lit("independent_school"))
    )
    table = (
        pupils.join(F.broadcast(school_context), on="school_id", how="inner")
        .join(F.broadcast(trust_at_year_end(trust_membership, year)), on="school_id", how="left")
        .join(actions, on="pupil_id", how="left")
        .withColumn("academic_year", F.lit(year).cast("int"))
        .withColumn("key_stage", F.lit(key_stage))
        .withColumn("data_stage", F.lit(data_stage))
        .withColumn("age_in_months", age_in_months(F.col("date_of_birth")))
        .withColumn("discountable", discountable(year))
        .withColumn("exclusion_reason", reason)
        .withColumn("included", F.col("exclusion_reason").isNull())
        # Filled in by the key stage's measure stage.
        .withColumn("prior_attainment", F.lit(None).cast("double"))
        .withColumn("prior_attainment_group", F.lit(None).cast("int"))
        # Filled in by the CVA stage.
        .withColumns({c.name: F.lit(None).cast(SPARK_TYPES[c.type]) for c in CVA_PUPIL_COLUMNS})
    )
    contract = PUPIL_RESULTS.names
    extra = [c for c in table.columns if c not in contract and not c.startswith("_")]
    return table.select(*contract, *extra)
