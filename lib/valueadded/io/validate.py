"""Row rules: every input row is accepted or set aside with a reason code.

A row rule is a reason code, a sentence saying what it checks, and a Spark condition
that is true when a row breaks it. `apply_rules` evaluates every rule of a table in one
pass and gives each row the list of rules it broke; the first is its `reason_code`.
Rules that look at other tables (an unknown school, a duplicate key) see flag columns
prepared by the caller (`validate_inputs`), so each rule stays one readable line.

Reason codes are `<rule>` or `<rule>.<column>`; the full catalogue, generated from
`rule_catalogue()`, is in docs/validation.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from pyspark.sql import Column as SparkColumn
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from valueadded.config import CodeLists
from valueadded.io.inputs import PARSE_ERRORS
from valueadded.io.schemas import KS2_RESULTS, KS4_RESULTS, TableSchema

REASONS = "_reasons"  # string: every rule the row broke, comma-separated, in catalogue order; "" if none
KEY_COUNT = "_key_count"  # rows sharing this row's key
KNOWN = "_known"  # the row's reference (school or pupil) exists
SCALED_SCORE_RANGE = (80, 120)
SLOT_POINTS_RANGE = (0.0, 9.0)
IDACI_RANGE = (0.0, 1.0)


@dataclass(frozen=True)
class RowRule:
    """One row rule: its reason code, what it checks, and when a row breaks it.

    `broken` is true when the row breaks the rule. Where it is null (SQL's answer for a
    comparison with an empty value) the rule is not broken: an empty value is the
    missing_value rules' business, so the other rules need no null guards of their own.
    """

    reason: str
    description: str
    broken: Callable[[], SparkColumn]


def _col(name: str) -> SparkColumn:
    return F.col(name)


def missing_value_rules(schema: TableSchema) -> list[RowRule]:
    return [
        RowRule(
            f"missing_value.{c.name}",
            f"{c.name} must not be empty",
            # A CSV value that failed to parse is null too, but reported as unparseable.
            lambda n=c.name: _col(n).isNull() & ~F.array_contains(_col(PARSE_ERRORS), n),
        )
        for c in schema.columns
        if not c.nullable
    ]


def unparseable_rules(schema: TableSchema) -> list[RowRule]:
    return [
        RowRule(
            f"unparseable_value.{c.name}",
            f"{c.name} must be a valid {c.type} (CSV inputs)",
            lambda n=c.name: F.array_contains(_col(PARSE_ERRORS), n),
        )
        for c in schema.columns
        if c.type != "string"
    ]


def code_rule(column: str, allowed: tuple[str, ...]) -> RowRule:
    return RowRule(
        f"unknown_code.{column}",
        f"{column} must be one of the configured codes ({len(allowed)} values)",
        # A lookup in one array rather than `isin`, which generates a branch per code:
        # a results row has a dozen such rules in code that must stay compact (apply_rules).
        lambda: ~F.array_contains(F.array(*[F.lit(code) for code in allowed]), _col(column)),
    )


def range_rule(column: str, low: float, high: float) -> RowRule:
    return RowRule(
        f"out_of_range.{column}",
        f"{column} must be from {low} to {high}",
        lambda: (_col(column) < low) | (_col(column) > high),
    )


def duplicate_rule(key: tuple[str, ...]) -> RowRule:
    return RowRule("duplicate_key", f"({', '.join(key)}) must be unique: every copy is set aside", lambda: _col(KEY_COUNT) > 1)


def unknown_reference_rule(reason: str, description: str) -> RowRule:
    return RowRule(reason, description, lambda: ~_col(KNOWN))


def scaled_score_rules(prefix: str, codes: CodeLists) -> list[RowRule]:
    """Rules for one KS2 test subject; prefix is e.g. "reading" or "ks2_reading"."""
    score, code = f"{prefix}_scaled_score", f"{prefix}_test_code"
    return [
        range_rule(score, *SCALED_SCORE_RANGE),
        code_rule(code, codes.ks2_test_codes),
        code_rule(f"{prefix}_ta", codes.ks2_test_ta),
        code_rule(f"{prefix}_pscale", codes.pscales),
        RowRule(
            f"inconsistent.{score}",
            f"{score} is given exactly when {code} is S",
            lambda: (_col(code) == "S") != _col(score).isNotNull(),
        ),
    ]


def date_window_rule(column: str, earliest: str, latest: str, what: str) -> RowRule:
    return RowRule(
        f"impossible_date.{column}",
        f"{column} must be {what} ({earliest} to {latest})",
        lambda: (_col(column) < F.lit(earliest).cast("date")) | (_col(column) > F.lit(latest).cast("date")),
    )


def birth_window(year: int, key_stage: str) -> tuple[str, str]:
    """Dates of birth a pupil of this cohort can have: two years either side of the year group.

    The KS2 year group of academic year Y was born Sep Y-11 to Aug Y-10, the KS4 one Sep
    Y-16 to Aug Y-15; pupils taught out of their year group are real but rare.
    """
    age_at_end = {"ks2": 11, "ks4": 16}[key_stage]
    return f"{year - age_at_end - 2}-09-01", f"{year - age_at_end + 1}-08-31"


def school_rules(codes: CodeLists, schema: TableSchema) -> list[RowRule]:
    return [
        *missing_value_rules(schema),
        *unparseable_rules(schema),
        duplicate_rule(schema.key),
        code_rule("phase", codes.phases),
        code_rule("provision", codes.provisions),
        code_rule("sector", codes.sectors),
        code_rule("region_code", codes.regions),
    ]


def trust_rules(schema: TableSchema) -> list[RowRule]:
    return [
        *missing_value_rules(schema),
        *unparseable_rules(schema),
        unknown_reference_rule("unknown_school", "school_id must be an accepted row of schools"),
        RowRule("leave_before_join", "leave_date must not be before join_date", lambda: _col("leave_date") < _col("join_date")),
        RowRule(
            "overlapping_trust_spells",
            "a school's trust spells must not overlap (the later spell is set aside)",
            lambda: _col("_overlaps_previous"),
        ),
    ]


def pupil_rules(codes: CodeLists, schema: TableSchema, year: int, key_stage: str, local_only: bool = False) -> list[RowRule]:
    """Pupil rules; `local_only` leaves out the key rule, which needs every row of the id."""
    earliest_birth, latest_birth = birth_window(year, key_stage)
    keyed = [] if local_only else [duplicate_rule(schema.key)]
    return [
        *missing_value_rules(schema),
        *unparseable_rules(schema),
        code_rule("key_stage", codes.key_stages),
        code_rule("gender", codes.genders),
        code_rule("sen", codes.sen),
        code_rule("ethnicity", codes.ethnicities),
        range_rule("idaci", *IDACI_RANGE),
        date_window_rule("date_of_birth", earliest_birth, latest_birth, "within two years of the cohort's birth year"),
        RowRule(
            "impossible_date.first_admission_date",
            "first_admission_date must be after date_of_birth and by the end of the academic year",
            lambda: (_col("first_admission_date") <= _col("date_of_birth"))
            | (_col("first_admission_date") > F.lit(f"{year}-08-31").cast("date")),
        ),
        unknown_reference_rule("unknown_school", "school_id must be an accepted row of schools"),
        *keyed,
    ]


def results_rules(codes: CodeLists, key_stage: str, local_only: bool = False, keyed_only: bool = False) -> list[RowRule]:
    """Results rules: row-local ones, then the key and pupil-reference ones.

    `local_only` gives the first group, `keyed_only` the second (they need every row of
    the pupil id, in both tables); the default gives all, in order.
    """
    schema = {"ks2": KS2_RESULTS, "ks4": KS4_RESULTS}[key_stage]
    common = [*missing_value_rules(schema), *unparseable_rules(schema)]
    if key_stage == "ks2":
        specific = [
            *(code_rule(f"ks1_{subject}", codes.ks1_ta) for subject in ("reading", "writing", "maths")),
            *scaled_score_rules("reading", codes),
            *scaled_score_rules("maths", codes),
            code_rule("writing_ta", codes.ks2_writing_ta),
            code_rule("writing_pscale", codes.pscales),
        ]
    else:
        points = [c.name for c in schema.columns if c.name.endswith("_points")]
        specific = [
            *scaled_score_rules("ks2_reading", codes),
            *scaled_score_rules("ks2_maths", codes),
            *(range_rule(name, *SLOT_POINTS_RANGE) for name in points),
        ]
    keyed = [
        duplicate_rule(schema.key),
        unknown_reference_rule("unknown_pupil", f"pupil_id must have a row in pupils for {key_stage}"),
    ]
    if local_only:
        return [*common, *specific]
    if keyed_only:
        return keyed
    return [*common, *specific, *keyed]


def amendment_rules(codes: CodeLists, schema: TableSchema, key_stage: str, local_only: bool = False) -> list[RowRule]:
    """Amendment rules; `local_only` leaves out the key and pupil-reference rules."""
    correctable = list(codes.correctable.get(key_stage, ()))
    local = [
        *missing_value_rules(schema),
        *unparseable_rules(schema),
        code_rule("key_stage", codes.key_stages),
        code_rule("action", codes.amendment_actions),
        RowRule(
            "incomplete_correction",
            "a correct amendment names a field and a new_value; remove and add name neither",
            lambda: F.when(_col("action") == "correct", _col("field").isNull() | _col("new_value").isNull()).otherwise(
                _col("field").isNotNull() | _col("new_value").isNotNull()
            ),
        ),
        RowRule(
            "unknown_field",
            f"field must be a correctable results column for the key stage ({len(correctable)} columns)",
            lambda: _col("field").isNotNull() & ~_col("field").isin(correctable),
        ),
        RowRule("invalid_new_value", "new_value must be a valid value of the field's type", lambda: _col("_new_value_invalid")),
    ]
    if local_only:
        return local
    return [
        *local,
        duplicate_rule(schema.key),
        unknown_reference_rule("unknown_pupil", f"pupil_id must have a row in pupils for {key_stage}"),
    ]


def is_clean() -> SparkColumn:
    """True for a row that broke no rule."""
    return F.col(REASONS) == F.lit("")


def apply_rules(frame: DataFrame, rules: list[RowRule], append: bool = False) -> DataFrame:
    """Set `_reasons` to the codes of every rule each row breaks, comma-separated, in rule order.

    A plain string (concat_ws skips the rules not broken) rather than an array filtered
    by a lambda: Spark may evaluate the expression once per later reference, and this
    form compiles to straight-line code. That code is one method for all of a table's
    rules, which the JVM compiles only while it is under 8,000 bytes: keep each rule's
    condition short (no null guards: `RowRule`). With `append`, the codes follow the
    reasons the row already has.
    """
    broken = [F.when(rule.broken(), F.lit(rule.reason)) for rule in rules]
    if append:
        existing = F.when(F.col(REASONS) != "", F.col(REASONS))
        return frame.withColumn(REASONS, F.concat_ws(",", existing, *broken))
    return frame.withColumn(REASONS, F.concat_ws(",", *broken))


def rule_catalogue(codes: CodeLists, year: int = 2024) -> dict[str, list[RowRule]]:
    """Every row rule per input table, for documentation and tests."""
    from valueadded.io.schemas import AMENDMENTS, PUPILS, SCHOOLS, TRUST_MEMBERSHIP

    return {
        "schools": school_rules(codes, SCHOOLS),
        "trust_membership": trust_rules(TRUST_MEMBERSHIP),
        "pupils": pupil_rules(codes, PUPILS, year, "ks2"),
        "ks2_results": results_rules(codes, "ks2"),
        "ks4_results": results_rules(codes, "ks4"),
        "amendments": amendment_rules(codes, AMENDMENTS, "ks2"),
    }
