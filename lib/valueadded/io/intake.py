"""Read, correct and validate every input of one key stage's release.

The intake is the first stage of every release. It reads the six input tables, applies
the checking-exercise corrections (validated stage only), evaluates the row rules, and
returns the accepted rows, the rejected rows (one row each, with reasons) and the
counts that reconcile them: for every input table, rows in scope = accepted + rejected.

Pupil rows and results rows are accepted together or not at all: a pupil whose results
row breaks a rule is set aside as `results_row_rejected`, a results row whose pupil row
breaks one as `pupil_row_rejected`, and a pupil with no results row as `no_results_row`,
so every pupil who reaches the measures has both.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from valueadded.config import CodeLists
from valueadded.io import validate as rules
from valueadded.io.inputs import PARSE_ERRORS, ROW_JSON, InputFile, fingerprint, locate, read_table
from valueadded.io.schemas import (
    AMENDMENTS,
    INPUT_TABLES,
    PUPILS,
    RESULTS_TABLE,
    SCHOOLS,
    SPARK_TYPES,
    TRUST_MEMBERSHIP,
)

log = logging.getLogger(__name__)

AMENDED = "amended"


class ValidationThresholdError(ValueError):
    """More rows were rejected than the configured share allows."""


@dataclass
class Intake:
    """The accepted inputs of one release, the rejected rows and the reconciliation."""

    schools: DataFrame
    trust_membership: DataFrame
    pupils: DataFrame  # accepted pupils of this key stage, with their results joined and `amended`
    amendments: DataFrame  # accepted amendments of this key stage
    rejected: DataFrame  # source_table, pupil_id, school_id, reason_code, all_reasons, row_json
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)
    files: dict[str, InputFile] = field(default_factory=dict)


def _split(frame: DataFrame) -> tuple[DataFrame, DataFrame]:
    accepted = frame.where(F.size(rules.REASONS) == 0)
    rejected = frame.where(F.size(rules.REASONS) > 0)
    return accepted, rejected


def _with_key_count(frame: DataFrame, key: tuple[str, ...]) -> DataFrame:
    return frame.withColumn(rules.KEY_COUNT, F.count(F.lit(1)).over(Window.partitionBy(*key)))


def _with_known(frame: DataFrame, column: str, known_keys: DataFrame) -> DataFrame:
    """Flag rows whose `column` value appears in the one-column frame `known_keys`."""
    flagged = known_keys.select(F.col(known_keys.columns[0]).alias(column)).distinct().withColumn(rules.KNOWN, F.lit(True))
    return frame.join(F.broadcast(flagged), on=column, how="left").withColumn(rules.KNOWN, F.coalesce(F.col(rules.KNOWN), F.lit(False)))


def _rejected_rows(frame: DataFrame, source_table: str, has_pupil: bool, has_school: bool) -> DataFrame:
    return frame.select(
        F.lit(source_table).alias("source_table"),
        (F.col("pupil_id") if has_pupil else F.lit(None).cast("string")).alias("pupil_id"),
        (F.col("school_id") if has_school else F.lit(None).cast("string")).alias("school_id"),
        F.element_at(rules.REASONS, 1).alias("reason_code"),
        F.array_join(rules.REASONS, ",").alias("all_reasons"),
        F.col(ROW_JSON).alias("row_json"),
    )


def _overlapping_spells(frame: DataFrame) -> DataFrame:
    by_school = Window.partitionBy("school_id").orderBy("join_date", "trust_id")
    previous_leave = F.lag("leave_date").over(by_school)
    previous_exists = F.lag("join_date").over(by_school).isNotNull()
    overlaps = previous_exists & (previous_leave.isNull() | (previous_leave > F.col("join_date")))
    return frame.withColumn("_overlaps_previous", F.coalesce(overlaps, F.lit(False)))


def _new_value_invalid(codes: CodeLists, key_stage: str) -> F.Column:
    """A correct amendment whose new_value is not a valid value of its field's type."""
    results = RESULTS_TABLE[key_stage]
    invalid = F.lit(False)
    for name in codes.correctable.get(key_stage, ()):
        parsed = F.col("new_value").try_cast(SPARK_TYPES[results.column(name).type])
        invalid = F.when(F.col("field") == name, parsed.isNull() & F.col("new_value").isNotNull()).otherwise(invalid)
    return invalid


def _apply_corrections(results: DataFrame, corrections: DataFrame, correctable: tuple[str, ...], key_stage: str) -> DataFrame:
    """Replace corrected result values; `amended` marks the rows changed."""
    schema = RESULTS_TABLE[key_stage]
    wide = corrections.groupBy("pupil_id").pivot("field", list(correctable)).agg(F.first("new_value"))
    renamed = wide.select("pupil_id", *[F.col(name).alias(f"_new_{name}") for name in correctable])
    joined = results.join(renamed, on="pupil_id", how="left")
    corrected = [
        F.when(F.col(f"_new_{name}").isNotNull(), F.col(f"_new_{name}").try_cast(SPARK_TYPES[schema.column(name).type]))
        .otherwise(F.col(name))
        .alias(name)
        if name in correctable
        else F.col(name)
        for name in schema.names
    ]
    amended = F.greatest(*[F.col(f"_new_{name}").isNotNull() for name in correctable]) if correctable else F.lit(False)
    return joined.select(*corrected, F.col(PARSE_ERRORS), F.col(ROW_JSON), amended.alias(AMENDED))


def run_intake(
    spark: SparkSession,
    input_dir: Path,
    year: int,
    key_stage: str,
    data_stage: str,
    codes: CodeLists,
) -> Intake:
    """Read and validate every input of one key stage's release.

    Args:
        spark: the session.
        input_dir: folder holding the input tables (docs/inputs.md).
        year: academic year (2024 = 2023/24).
        key_stage: "ks2" or "ks4".
        data_stage: "unvalidated" or "validated"; corrections apply only when validated.
        codes: the configured code lists.

    Raises:
        StructuralInputError: an input cannot be used at all.
    """
    results_name = RESULTS_TABLE[key_stage].name
    names = ("schools", "trust_membership", "pupils", results_name, "amendments")
    files = {name: locate(input_dir, name) for name in names}
    raw, rows_in = {}, {}
    for name in names:
        raw[name], rows_in[name] = read_table(spark, files[name], INPUT_TABLES[name])
    counts: dict[str, dict[str, int]] = {}
    rejected_parts: list[DataFrame] = []

    # Schools first: every other table refers to them.
    schools = rules.apply_rules(_with_key_count(raw["schools"], SCHOOLS.key), rules.school_rules(codes, SCHOOLS))
    schools = schools.persist(StorageLevel.MEMORY_AND_DISK)
    schools_ok, schools_bad = _split(schools)
    rejected_parts.append(_rejected_rows(schools_bad, "schools", False, True))
    school_ids = schools_ok.select("school_id")

    trusts = _overlapping_spells(_with_known(raw["trust_membership"], "school_id", school_ids))
    trusts = rules.apply_rules(trusts, rules.trust_rules(TRUST_MEMBERSHIP))
    trusts_ok, trusts_bad = _split(trusts)
    rejected_parts.append(_rejected_rows(trusts_bad, "trust_membership", False, True))

    # Rows of the other key stage are out of this run's scope; a row with an unknown
    # key stage is in every run's scope, so it is rejected, never lost.
    in_scope = F.col("key_stage").isNull() | (F.col("key_stage") == key_stage) | ~F.col("key_stage").isin(list(codes.key_stages))
    pupils_raw = raw["pupils"].where(in_scope)
    amendments_raw = raw["amendments"].where(in_scope)
    pupil_ids_any = pupils_raw.select("pupil_id")

    amendments = _with_known(_with_key_count(amendments_raw, AMENDMENTS.key), "pupil_id", pupil_ids_any)
    amendments = amendments.withColumn("_new_value_invalid", _new_value_invalid(codes, key_stage))
    amendments = rules.apply_rules(amendments, rules.amendment_rules(codes, AMENDMENTS, key_stage))
    amendments = amendments.persist(StorageLevel.MEMORY_AND_DISK)
    amendments_ok, amendments_bad = _split(amendments)
    rejected_parts.append(_rejected_rows(amendments_bad, "amendments", True, False))

    results = raw[results_name]
    correctable = codes.correctable.get(key_stage, ())
    if data_stage == "validated":
        corrections = amendments_ok.where(F.col("action") == "correct").select("pupil_id", "field", "new_value")
        results = _apply_corrections(results, corrections, correctable, key_stage)
    else:
        results = results.withColumn(AMENDED, F.lit(False))
    results = _with_known(_with_key_count(results, RESULTS_TABLE[key_stage].key), "pupil_id", pupil_ids_any)
    results = rules.apply_rules(results, rules.results_rules(codes, key_stage))

    pupils = _with_known(_with_key_count(pupils_raw, PUPILS.key), "school_id", school_ids)
    pupils = rules.apply_rules(pupils, rules.pupil_rules(codes, PUPILS, year, key_stage))

    # Pair each pupil row with its results row: both are accepted or neither is.
    results_status = results.groupBy("pupil_id").agg(F.max(F.size(rules.REASONS) == 0).alias("_results_ok"))
    pupil_status = pupils.groupBy("pupil_id").agg(F.max(F.size(rules.REASONS) == 0).alias("_pupil_ok"))
    pupils = pupils.join(results_status, on="pupil_id", how="left").withColumn(
        rules.REASONS,
        F.when(F.size(rules.REASONS) > 0, F.col(rules.REASONS))
        .when(F.col("_results_ok").isNull(), F.array(F.lit("no_results_row")))
        .when(~F.col("_results_ok"), F.array(F.lit("results_row_rejected")))
        .otherwise(F.col(rules.REASONS)),
    )
    results = results.join(pupil_status, on="pupil_id", how="left").withColumn(
        rules.REASONS,
        F.when(F.size(rules.REASONS) > 0, F.col(rules.REASONS))
        .when(~F.coalesce(F.col("_pupil_ok"), F.lit(True)), F.array(F.lit("pupil_row_rejected")))
        .otherwise(F.col(rules.REASONS)),
    )
    pupils = pupils.persist(StorageLevel.MEMORY_AND_DISK)
    results = results.persist(StorageLevel.MEMORY_AND_DISK)
    pupils_ok, pupils_bad = _split(pupils)
    results_ok, results_bad = _split(results)
    rejected_parts.append(_rejected_rows(pupils_bad, "pupils", True, True))
    rejected_parts.append(_rejected_rows(results_bad, results_name, True, False))

    results_columns = [c for c in RESULTS_TABLE[key_stage].names if c != "pupil_id"]
    cohort = pupils_ok.select(*PUPILS.names).join(
        results_ok.select("pupil_id", *results_columns, AMENDED), on="pupil_id", how="inner"
    )

    rejected = rejected_parts[0]
    for part in rejected_parts[1:]:
        rejected = rejected.unionByName(part)
    rejected = rejected.persist(StorageLevel.MEMORY_AND_DISK)
    rejected_by_table = {row["source_table"]: row["n"] for row in rejected.groupBy("source_table").agg(F.count(F.lit(1)).alias("n")).collect()}

    scoped = {
        "pupils": pupils_raw.count(),
        "amendments": amendments_raw.count(),
    }
    for name in names:
        in_scope_rows = scoped.get(name, rows_in[name])
        rejected_rows = rejected_by_table.get(name, 0)
        counts[name] = {
            "rows_in": rows_in[name],
            "rows_in_scope": in_scope_rows,
            "rows_other_key_stage": rows_in[name] - in_scope_rows,
            "rows_rejected": rejected_rows,
            "rows_accepted": in_scope_rows - rejected_rows,
        }
    return Intake(
        schools=schools_ok.drop(rules.REASONS, rules.KEY_COUNT, PARSE_ERRORS, ROW_JSON),
        trust_membership=trusts_ok.select(*TRUST_MEMBERSHIP.names),
        pupils=cohort,
        amendments=amendments_ok.select(*AMENDMENTS.names),
        rejected=rejected,
        counts=counts,
        fingerprints={name: fingerprint(files[name]) for name in names},
        files=files,
    )


def check_rejected_share(counts: dict[str, dict[str, int]], max_share: float) -> None:
    """Raise ValidationThresholdError when any table's rejected share exceeds max_share."""
    over = {
        name: c["rows_rejected"] / c["rows_in_scope"]
        for name, c in counts.items()
        if c["rows_in_scope"] and c["rows_rejected"] / c["rows_in_scope"] > max_share
    }
    if over:
        detail = "; ".join(
            f"{name}: {counts[name]['rows_rejected']} of {counts[name]['rows_in_scope']} rows ({share:.2%})" for name, share in sorted(over.items())
        )
        raise ValidationThresholdError(
            f"rejected rows exceed max_rejected_share {max_share:.2%}: {detail}; see the rejected_rows table for reasons"
        )
