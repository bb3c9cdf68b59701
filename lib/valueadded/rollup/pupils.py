"""Pupil values: what each pupil contributes to each measure, and the subgroups they are in.

Every roll-up figure is a (weighted) mean of pupil values, so the pupils behind any
published figure can be listed (`pupil_measures`, the drill-down table). A pupil's value
in a measure, and who has one:

- progress measures: `adjusted_progress` of the pupil's `pupil_progress` row for the
  subject, for pupils with one (the pupils behind the school score);
- KS2 % reaching the expected / higher standard in reading, writing, maths and all
  three (rwm): 100 or 0, for every included pupil (the school measures' denominator);
- KS2 average scaled score in reading and maths: the scaled score, for included pupils
  with one (80+; nominal scores never count);
- KS4 attainment_8: the pupil's Attainment 8, for every included pupil;
- cva: the model's centre (100 or 1000) + the pupil's CVA score, for pupils in a model.

Subgroup columns (strings, one per dimension) are derived from pupil_results columns:
disadvantaged / fsm / eal yes or no; sen none (N), support (K) or plan (E); gender
female (F) or male (M); ethnic_group the configured major group of `ethnicity`;
prior_attainment_band low / middle / high from `prior_attainment` and the key stage's
configured bounds (none without prior attainment); high_needs yes when disadvantaged,
EAL or SEN support or plan.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from valueadded.io.pseudonym import carried_pseudonyms
from valueadded.rollup.config import ETHNIC_GROUP, NO, YES, SubgroupRules
from valueadded.rollup.measures import CVA, MEASURES, PROGRESS, Measure

VALUE_PREFIX = "value__"
SEN_GROUPS = {"N": "none", "K": "support", "E": "plan"}
GENDERS = {"F": "female", "M": "male"}
PUPIL_CONTEXT = ("pupil_id", "school_id", "trust_id", "la_code", "region_code")


def value_column(measure: str) -> str:
    """Name of a measure's value column in the wide pupil frame."""
    return f"{VALUE_PREFIX}{measure}"


def _yes_no(column: str) -> Column:
    return F.when(F.col(column), F.lit(YES)).otherwise(F.lit(NO))


def _mapped(column: str, mapping: dict[str, str]) -> Column:
    """mapping[column] as a Column (null for a value not in the mapping)."""
    result = F.lit(None).cast("string")
    for code, label in sorted(mapping.items()):
        result = F.when(F.col(column) == code, F.lit(label)).otherwise(result)
    return result


def subgroup_columns(rules: SubgroupRules, key_stage: str) -> dict[str, Column]:
    """Every subgroup dimension's column, computed from pupil_results columns."""
    ethnic = {code: group for group, codes in rules.ethnic_groups.items() for code in codes}
    middle, high = rules.prior_attainment_bands[key_stage]
    prior = F.col("prior_attainment")
    band = (
        F.when(prior.isNull(), F.lit("none"))
        .when(prior >= high, F.lit("high"))
        .when(prior >= middle, F.lit("middle"))
        .otherwise(F.lit("low"))
    )
    high_needs = F.col("disadvantaged") | F.col("eal") | F.col("sen").isin("K", "E")
    return {
        "disadvantaged": _yes_no("disadvantaged"),
        "fsm": _yes_no("fsm"),
        "sen": _mapped("sen", SEN_GROUPS),
        "eal": _yes_no("eal"),
        "gender": _mapped("gender", GENDERS),
        ETHNIC_GROUP: _mapped("ethnicity", ethnic),
        "prior_attainment_band": band,
        "high_needs": F.when(high_needs, F.lit(YES)).otherwise(F.lit(NO)),
    }


def ks2_attainment_values(measures: tuple[Measure, ...], tables) -> dict[str, Column]:
    """KS2 attainment values per pupil (null for a pupil not in the measure).

    Args:
        measures: the KS2 attainment measures.
        tables: the year's `Ks2Tables` (standards and writing assessments).
    """
    reached = {}
    for level, standard, writing in (
        ("expected", tables.expected_standard, tables.writing_expected_ta),
        ("higher", tables.higher_standard, tables.writing_higher_ta),
    ):
        subject = {s: F.coalesce(F.col(f"{s}_scaled_score") >= standard, F.lit(False)) for s in ("reading", "maths")}
        subject["writing"] = F.coalesce(F.col("writing_ta").isin(list(writing)), F.lit(False))
        subject["rwm"] = subject["reading"] & subject["writing"] & subject["maths"]
        reached[level] = subject
    included = F.col("included")
    values = {}
    for measure in measures:
        if measure.name.startswith("average_scaled_score_"):
            values[measure.name] = F.when(included, F.col(f"{measure.subject}_scaled_score").cast("double"))
        else:
            level = "expected" if measure.name.startswith("pct_expected_") else "higher"
            hit = reached[level][measure.subject]
            values[measure.name] = F.when(included, F.when(hit, F.lit(100.0)).otherwise(F.lit(0.0)))
    return values


def ks4_attainment_values(measures: tuple[Measure, ...]) -> dict[str, Column]:
    """KS4 attainment values per pupil: Attainment 8 of every included pupil."""
    return {m.name: F.when(F.col("included"), F.col("attainment_8").cast("double")) for m in measures}


def cva_value(centres: dict[str, float]) -> Column:
    """centre of the pupil's CVA model + the pupil's CVA score (null outside a model)."""
    centre = F.lit(None).cast("double")
    for model, value in sorted(centres.items()):
        centre = F.when(F.col("cva_model") == model, F.lit(float(value))).otherwise(centre)
    return centre + F.col("cva_residual")


def progress_by_pupil(pupil_progress: DataFrame, key_stage: str) -> DataFrame:
    """One row per pupil with a progress score: pupil_id and a value column per progress measure.

    The rows of one pupil sit in one partition (pupil_progress is exploded from the
    pupil table), so the partial aggregation folds them before the shuffle. The result is
    broadcast to the pupils (pupil_value_frame).
    """
    progress = [m for m in MEASURES[key_stage] if m.kind == PROGRESS]
    scored = pupil_progress.where(F.col("adjusted_progress").isNotNull())
    return scored.groupBy("pupil_id").agg(*(
        F.max(F.when(F.col("subject") == m.subject, F.col("adjusted_progress"))).alias(value_column(m.name))
        for m in progress
    ))


def pupil_value_frame(
    pupils: DataFrame,
    progress: DataFrame,
    school_trusts: DataFrame,
    key_stage: str,
    subgroups: SubgroupRules,
    attainment_values: dict[str, Column],
    cva_centres: dict[str, float],
) -> DataFrame:
    """One row per pupil of the pupil table: context, `included`, subgroup columns and a value per measure.

    Args:
        pupils: the release's pupil table after the CVA stage (one row per pupil).
        progress: progress_by_pupil() output.
        school_trusts: one row per school (at least those in a trust): school_id and
            trust_weight (null when the school counts towards no trust's figures).
        attainment_values: measure -> value Column over `pupils` (ks2/ks4_attainment_values).
        cva_centres: CVA model -> centre.
    """
    values = dict(attainment_values)
    values.update({m.name: cva_value(cva_centres) for m in MEASURES[key_stage] if m.kind == CVA})
    dimensions = subgroup_columns(subgroups, key_stage)
    base = pupils.select(
        *PUPIL_CONTEXT,
        *carried_pseudonyms(pupils),
        "included",
        *(column.alias(name) for name, column in dimensions.items()),
        *(column.alias(value_column(name)) for name, column in values.items()),
    )
    trust_weights = F.broadcast(school_trusts.select("school_id", "trust_weight"))
    # One row per pupil with a score and a few doubles (about 40 MB for the nation): sent to
    # the pupils, which are then not shuffled to meet it (wide: 5.0 s -> 3.3-4.3 s, KS2).
    return base.join(F.broadcast(progress), on="pupil_id", how="left").join(trust_weights, on="school_id", how="left")


def drill_down_rows(wide: DataFrame, columns: list[str]) -> DataFrame:
    """The `pupil_measures` rows: one per pupil, a column per measure of every key stage
    (null for another key stage's)."""
    return wide.select(*(
        F.col(value_column(name)).alias(name) if value_column(name) in wide.columns
        else F.col(name) if name in wide.columns
        else F.lit(None).cast("double").alias(name)
        for name in columns
    ), *carried_pseudonyms(wide))
