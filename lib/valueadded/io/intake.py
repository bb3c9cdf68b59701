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

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from valueadded.config import CodeLists
from valueadded.io import validate as rules
from valueadded.io.inputs import PARSE_ERRORS, RAW, InputFile, fingerprint, locate, read_table, row_json
from valueadded.io.schemas import (
    AMENDMENTS,
    INPUT_TABLES,
    PUPILS,
    RESULTS_TABLE,
    SCHOOLS,
    SPARK_TYPES,
    TRUST_MEMBERSHIP,
)
from valueadded.spark import free, materialise

log = logging.getLogger(__name__)

AMENDED = "amended"


class ValidationThresholdError(ValueError):
    """More rows were rejected than the configured share allows."""


@dataclass
class Intake:
    """The accepted inputs of one release, the rejected rows and the reconciliation."""

    schools: DataFrame
    trust_membership: DataFrame
    # Accepted pupils of this key stage, with their results joined and `amended`; None once
    # free_pupil_rows() has run.
    pupils: DataFrame | None
    amendments: DataFrame  # accepted amendments of this key stage
    rejected: DataFrame  # source_table, pupil_id, school_id, reason_code, all_reasons, row_json
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)
    files: dict[str, InputFile] = field(default_factory=dict)
    cached: list[DataFrame] = field(default_factory=list)  # materialised frames, freed by release()
    # The materialised rows `pupils` is read from: every row of the pupil and results tables
    # of this key stage, accepted or not, with their row-local rules' columns.
    pupil_rows: list[DataFrame] = field(default_factory=list)

    def release(self) -> None:
        """Free the materialised frames."""
        for frame in self.cached + self.pupil_rows:
            free(frame)

    def free_pupil_rows(self) -> None:
        """Free the rows `pupils` is read from, once a frame built from it is materialised.

        Nothing else reads them, and the rest of the release runs in the memory they took
        (about 0.5 GiB for a national cohort). `pupils` is None afterwards.
        """
        for frame in self.pupil_rows:
            free(frame)
        self.pupil_rows, self.pupils = [], None


def _split(frame: DataFrame) -> tuple[DataFrame, DataFrame]:
    accepted = frame.where(rules.is_clean())
    rejected = frame.where(~rules.is_clean())
    return accepted, rejected


def _with_key_count(frame: DataFrame, key: tuple[str, ...]) -> DataFrame:
    return frame.withColumn(rules.KEY_COUNT, F.count(F.lit(1)).over(Window.partitionBy(*key)))


def _with_known(frame: DataFrame, column: str, known_keys: DataFrame) -> DataFrame:
    """Flag rows whose `column` value appears in the one-column frame `known_keys`."""
    flagged = known_keys.select(F.col(known_keys.columns[0]).alias(column)).distinct().withColumn(rules.KNOWN, F.lit(True))
    return frame.join(F.broadcast(flagged), on=column, how="left").withColumn(rules.KNOWN, F.coalesce(F.col(rules.KNOWN), F.lit(False)))


def _rejected_rows(frame: DataFrame, source_table: str, has_pupil: bool, has_school: bool) -> DataFrame:
    """rejected_rows columns; `row_json` shows results rows after any correction applied."""
    return frame.select(
        F.lit(source_table).alias("source_table"),
        (F.col("pupil_id") if has_pupil else F.lit(None).cast("string")).alias("pupil_id"),
        (F.col("school_id") if has_school else F.lit(None).cast("string")).alias("school_id"),
        F.substring_index(F.col(rules.REASONS), ",", 1).alias("reason_code"),
        F.col(rules.REASONS).alias("all_reasons"),
        row_json(frame, INPUT_TABLES[source_table]).alias("row_json"),
    )


def _overlapping_spells(frame: DataFrame) -> DataFrame:
    by_school = Window.partitionBy("school_id").orderBy("join_date", "trust_id")
    previous_leave = F.lag("leave_date").over(by_school)
    previous_exists = F.lag("join_date").over(by_school).isNotNull()
    overlaps = previous_exists & (previous_leave.isNull() | (previous_leave > F.col("join_date")))
    return frame.withColumn("_overlaps_previous", F.coalesce(overlaps, F.lit(False)))


PAIRING_COUNTS = ("_n_pupil_rows", "_n_results_rows", "_n_clean_pupil_rows", "_n_clean_results_rows")


def _pairing_problems(pupils: DataFrame, results: DataFrame) -> DataFrame:
    """Pupil ids that are not exactly one clean pupil row and one clean results row.

    One row per such id, with its row counts and clean-row counts on each side.
    """
    clean = rules.is_clean()
    sides = pupils.select("pupil_id", F.lit(1).alias("_p"), F.lit(0).alias("_r"), clean.cast("int").alias("_clean")).unionByName(
        results.select("pupil_id", F.lit(0).alias("_p"), F.lit(1).alias("_r"), clean.cast("int").alias("_clean"))
    )
    counts = sides.groupBy("pupil_id").agg(
        F.sum("_p").alias("_n_pupil_rows"),
        F.sum("_r").alias("_n_results_rows"),
        F.sum(F.col("_p") * F.col("_clean")).alias("_n_clean_pupil_rows"),
        F.sum(F.col("_r") * F.col("_clean")).alias("_n_clean_results_rows"),
    )
    all_one = (F.col("_n_pupil_rows") == 1) & (F.col("_n_results_rows") == 1)
    all_one = all_one & (F.col("_n_clean_pupil_rows") == 1) & (F.col("_n_clean_results_rows") == 1)
    return counts.where(~all_one)


def _with_pairing(frame: DataFrame, problems: DataFrame) -> DataFrame:
    """Add the pairing counts; ids not among the problems are one clean row on each side."""
    joined = frame.join(F.broadcast(problems), on="pupil_id", how="left")
    return joined.select(
        *[c for c in frame.columns],
        *[F.coalesce(F.col(name), F.lit(1)).cast("long").alias(name) for name in PAIRING_COUNTS],
    )


def _unique_corrections(amendments_local: DataFrame) -> DataFrame:
    """Corrections that pass their row-local rules and are the only one for their key."""
    candidates = amendments_local.where((F.col("action") == "correct") & rules.is_clean())
    unique = candidates.groupBy(*AMENDMENTS.key).agg(F.count(F.lit(1)).alias("_n")).where(F.col("_n") == 1).drop("_n")
    return candidates.join(unique, on=list(AMENDMENTS.key), how="inner").select("pupil_id", "field", "new_value")


def _new_value_invalid(codes: CodeLists, key_stage: str) -> F.Column:
    """A correct amendment whose new_value is not a valid value of its field's type."""
    results = RESULTS_TABLE[key_stage]
    invalid = F.lit(False)
    for name in codes.correctable.get(key_stage, ()):
        parsed = F.col("new_value").try_cast(SPARK_TYPES[results.column(name).type])
        invalid = F.when(F.col("field") == name, parsed.isNull() & F.col("new_value").isNotNull()).otherwise(invalid)
    return invalid


def _apply_corrections(results: DataFrame, corrections: DataFrame, correctable: tuple[str, ...], key_stage: str) -> DataFrame:
    """Replace corrected result values; `amended` marks the rows changed.

    The new values are parsed to their columns' types on the few corrected pupils, before
    they are joined to every results row: the parsing code is then not part of the (already
    long) code Spark generates for the results rows, which must stay under the JVM's limit
    for compiling a method (tests/unit/test_validation.py).
    """
    schema = RESULTS_TABLE[key_stage]
    if not correctable:
        return results.withColumn(AMENDED, F.lit(False))
    wide = corrections.groupBy("pupil_id").pivot("field", list(correctable)).agg(F.first("new_value"))
    parsed = wide.select(
        "pupil_id",
        *[F.col(name).isNotNull().alias(f"_given_{name}") for name in correctable],
        *[F.col(name).try_cast(SPARK_TYPES[schema.column(name).type]).alias(f"_new_{name}") for name in correctable],
        F.greatest(*[F.col(name).isNotNull() for name in correctable]).alias(AMENDED),
    )
    joined = results.join(parsed, on="pupil_id", how="left")
    corrected = [
        F.when(F.col(f"_given_{name}"), F.col(f"_new_{name}")).otherwise(F.col(name)).alias(name)
        if name in correctable
        else F.col(name)
        for name in schema.names
    ]
    carried = [F.col(name) for name in (PARSE_ERRORS, RAW) if name in results.columns]
    return joined.select(*corrected, *carried, F.coalesce(F.col(AMENDED), F.lit(False)).alias(AMENDED))


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
    schools = materialise(schools)
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

    results = raw[results_name]
    if data_stage == "validated":
        # Corrections come from amendments that pass their own row rules; whether the
        # pupil exists is checked on the corrected results row itself.
        amendments_local = rules.apply_rules(
            amendments_raw.withColumn("_new_value_invalid", _new_value_invalid(codes, key_stage)),
            rules.amendment_rules(codes, AMENDMENTS, key_stage, local_only=True),
        )
        corrections = _unique_corrections(amendments_local)
        results = _apply_corrections(results, corrections, codes.correctable.get(key_stage, ()), key_stage)
    else:
        results = results.withColumn(AMENDED, F.lit(False))

    # Row-local rules first, on each table separately. Their rows are computed once, here:
    # the pairing aggregation and every later step read them from memory, and no step
    # reads the input files or evaluates these rules again.
    pupils = rules.apply_rules(_with_known(pupils_raw, "school_id", school_ids), rules.pupil_rules(codes, PUPILS, year, key_stage, local_only=True))
    results = rules.apply_rules(results, rules.results_rules(codes, key_stage, local_only=True))
    pupils, results = materialise(pupils), materialise(results)
    rows_with_local_rules = [pupils, results]

    # Then one narrow aggregation per pupil id over both tables gives what the key and
    # pairing rules need. Only ids that are not exactly one clean row on each side can
    # break those rules; they are few, so they are broadcast to both tables instead of
    # shuffling the wide rows.
    problems = materialise(_pairing_problems(pupils, results))
    pupils = _with_pairing(pupils, problems)
    results = _with_pairing(results, problems)
    pupils = rules.apply_rules(pupils.withColumn(rules.KEY_COUNT, F.col("_n_pupil_rows")), [rules.duplicate_rule(PUPILS.key)], append=True)
    results = rules.apply_rules(
        results.withColumn(rules.KEY_COUNT, F.col("_n_results_rows")).withColumn(rules.KNOWN, F.col("_n_pupil_rows") > 0),
        rules.results_rules(codes, key_stage, keyed_only=True),
        append=True,
    )
    pupil_pair_ok = (F.col("_n_pupil_rows") == 1) & (F.col("_n_clean_pupil_rows") == 1)
    results_pair_ok = (F.col("_n_results_rows") == 1) & (F.col("_n_clean_results_rows") == 1)
    pupils = pupils.withColumn(
        rules.REASONS,
        F.when(~rules.is_clean(), F.col(rules.REASONS))
        .when(F.col("_n_results_rows") == 0, F.lit("no_results_row"))
        .when(~results_pair_ok, F.lit("results_row_rejected"))
        .otherwise(F.col(rules.REASONS)),
    )
    results = results.withColumn(
        rules.REASONS,
        F.when(~rules.is_clean(), F.col(rules.REASONS))
        .when(~pupil_pair_ok, F.lit("pupil_row_rejected"))
        .otherwise(F.col(rules.REASONS)),
    )

    # Amendments are few: find which of their pupils exist with a broadcast semi-join.
    amendment_ids = F.broadcast(amendments_raw.select("pupil_id").distinct())
    known_ids = pupils_raw.select("pupil_id").join(amendment_ids, on="pupil_id", how="left_semi").distinct()
    amendments = _with_known(_with_key_count(amendments_raw, AMENDMENTS.key), "pupil_id", known_ids)
    amendments = amendments.withColumn("_new_value_invalid", _new_value_invalid(codes, key_stage))
    amendments = rules.apply_rules(amendments, rules.amendment_rules(codes, AMENDMENTS, key_stage))
    amendments = materialise(amendments)
    amendments_ok, amendments_bad = _split(amendments)
    rejected_parts.append(_rejected_rows(amendments_bad, "amendments", True, False))

    # The key and pairing rules are a broadcast join and a few expressions on the
    # materialised rows: each later step (the cohort, the rejected rows) adds them itself.
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
    rejected = materialise(rejected)
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
        schools=schools_ok.select(*SCHOOLS.names),
        trust_membership=trusts_ok.select(*TRUST_MEMBERSHIP.names),
        pupils=cohort,
        amendments=amendments_ok.select(*AMENDMENTS.names),
        rejected=rejected,
        counts=counts,
        fingerprints={name: fingerprint(files[name]) for name in names},
        files=files,
        cached=[schools, problems, amendments, rejected],
        pupil_rows=rows_with_local_rules,
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
