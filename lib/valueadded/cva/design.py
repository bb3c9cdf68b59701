"""The CVA design matrix in Spark, from a model specification.

Three steps, each a DataFrame in, DataFrame out (one row per pupil throughout):

1. :func:`with_prior_and_outcome` scores each pupil's prior attainment and outcome from the
   pupil table's own columns, as the specification says (null when the pupil has none):

   * ``ks2_scaled_scores`` (KS4 prior): per subject the KS2 scaled score (test code S), or
     the nominal score of code N, or of code B by teacher assessment (PKG/PKE/PKF) or, with
     assessment BLW, by P-scale; ``prior_aps`` = (reading + maths) / 2, so in steps of 0.5.
     Any other code (A, D, M, U, Q) or no KS2 record: no prior attainment.
   * ``ks1_teacher_assessment`` (KS2 prior): KS1 points per subject from the spec's table
     (framework era PKF=4, WTS=6, EXS=8, GDS=10; levels era W=3, 1=9, 2C=13, 2B=15, 2A=17,
     3=21, 4+=27); ``prior_aps`` = ((reading + writing)/2 + maths)/2. A subject without
     points (no KS1 record, P-scales, BLW, A, D): no prior attainment.
   * ``subject_points``: ``prior_aps`` = the mean of the listed numeric columns.
   * outcomes: ``attainment8`` = 2 x english + 2 x maths + the six other slot points;
     ``ks2_reading_maths_average`` = mean of the reading and maths scores scored as above
     (the pupil needs both); ``column`` = a numeric column as it is.

2. The caller keeps the pupils who are in the model (non-null prior and outcome, in the
   model's population).

3. :func:`with_design` adds one double column per term (``cva_x_<term>``; no intercept
   column): ``prior_aps``, ``prior_aps_sq``, ``prior_<subject>_minus_aps``; categorical
   indicators (1 when the pupil's code is in the level, 0 otherwise, null when the code
   is null); pupil terms cast to double (booleans 0/1); interactions as products; and
   the school-level terms: the mean and the population SD (ddof 0, seed 004 paragraph 24)
   of ``prior_aps`` over the school's pupils *in this frame*, so the school-level terms
   describe exactly the pupils in the school's CVA score (seed 004 paragraph 23).
"""

from __future__ import annotations

from typing import Mapping

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from valueadded import sums
from valueadded.config import ConfigError
from valueadded.cva.spec import ModelSpec, OutcomeSpec, PriorSpec
from valueadded.io.schemas import A8_SLOT_COLUMNS
from valueadded.measures import inclusion
from valueadded.measures.inclusion import NominalScores
from valueadded.measures.prior_attainment import code_points

PRIOR_APS = "cva_prior_aps"
OUTCOME = "cva_outcome"
DESIGN_PREFIX = "cva_x_"
_SCHOOL_MEAN, _SCHOOL_SD = "_cva_school_mean_prior_aps", "_cva_school_sd_prior_aps"
_A8_WEIGHTS = {"english_points": 2.0, "maths_points": 2.0}
_NUMERIC_TYPES = (T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.FloatType, T.DoubleType, T.DecimalType, T.BooleanType)


class DesignError(ConfigError):
    """The pupil frame lacks a column the specification needs, or it has the wrong type
    (a configuration error: the command line exits with code 2)."""


def design_column(term: str) -> str:
    """The DataFrame column holding a term's values."""
    return f"{DESIGN_PREFIX}{term}"


def ks2_test_score(prefix: str, subject: str, nominal: NominalScores) -> Column:
    """A KS2 test outcome as a score, by the KS2 measures' rule
    (valueadded.measures.inclusion.ks2_test_score): the scaled score (S) or a nominal score
    (B, N); else null."""
    return inclusion.ks2_test_score(f"{prefix}{subject}", nominal)


def prior_subject_points(prior: PriorSpec) -> dict[str, Column]:
    """Each subject's prior attainment points (null when the pupil has none in the subject)."""
    if prior.measure == "ks2_scaled_scores":
        return {s: ks2_test_score("ks2_", s, prior.nominal_scores) for s in prior.subjects}
    if prior.measure == "ks1_teacher_assessment":
        return {s: code_points(F.col(f"ks1_{s}"), prior.points) for s in prior.subjects}
    if prior.measure == "subject_points":
        return {s: F.col(column).cast("double") for s, column in prior.columns.items()}
    raise ValueError(f"unknown prior attainment measure {prior.measure!r}")


def prior_average(prior: PriorSpec, points: Mapping[str, Column]) -> Column:
    """The prior average point score (null if any subject is null)."""
    if prior.measure == "ks2_scaled_scores":
        return (points["reading"] + points["maths"]) / 2.0
    if prior.measure == "ks1_teacher_assessment":
        return ((points["reading"] + points["writing"]) / 2.0 + points["maths"]) / 2.0
    total = None
    for column in points.values():
        total = column if total is None else total + column
    return total / float(len(points))


def outcome_value(outcome: OutcomeSpec) -> Column:
    """The outcome the model explains (null when the pupil has none)."""
    if outcome.measure == "attainment8":
        total = None
        for column in A8_SLOT_COLUMNS:
            term = F.col(column).cast("double") * _A8_WEIGHTS.get(column, 1.0)
            total = term if total is None else total + term
        return total
    if outcome.measure == "ks2_reading_maths_average":
        return (ks2_test_score("", "reading", outcome.nominal_scores)
                + ks2_test_score("", "maths", outcome.nominal_scores)) / 2.0
    if outcome.measure == "column":
        return F.col(outcome.column).cast("double")
    raise ValueError(f"unknown outcome measure {outcome.measure!r}")


def _required_columns(spec: ModelSpec) -> list[str]:
    prior, outcome = spec.prior, spec.outcome
    needed = []
    if prior.measure == "ks2_scaled_scores":
        needed += [f"ks2_{s}_{part}" for s in prior.subjects for part in ("scaled_score", "test_code", "ta", "pscale")]
    elif prior.measure == "ks1_teacher_assessment":
        needed += [f"ks1_{s}" for s in prior.subjects]
    else:
        needed += list(prior.columns.values())
    if outcome.measure == "attainment8":
        needed += list(A8_SLOT_COLUMNS)
    elif outcome.measure == "ks2_reading_maths_average":
        needed += [f"{s}_{part}" for s in ("reading", "maths") for part in ("scaled_score", "test_code", "ta", "pscale")]
    else:
        needed.append(outcome.column)
    needed += [c.column for c in spec.categorical] + list(spec.pupil_terms)
    return needed


def check_columns(frame: DataFrame, spec: ModelSpec, group: str = "school_id") -> None:
    """Raise DesignError naming every column the spec needs that the frame lacks or mistypes."""
    types = {f.name: f.dataType for f in frame.schema.fields}
    missing = sorted({c for c in [*_required_columns(spec), group] if c not in types})
    if missing:
        raise DesignError(f"model {spec.name} ({spec.source}): the pupil frame has no column(s) {missing}")
    wrong = [c for c in spec.pupil_terms if not isinstance(types[c], _NUMERIC_TYPES)]
    if wrong:
        raise DesignError(
            f"model {spec.name} ({spec.source}): pupil term(s) must be numeric or boolean columns: "
            + ", ".join(f"{c} is {types[c].simpleString()}" for c in wrong)
        )


def with_prior_and_outcome(frame: DataFrame, spec: ModelSpec) -> DataFrame:
    """Add ``cva_prior_aps``, ``cva_prior_<subject>`` (for each subject difference) and ``cva_outcome``."""
    check_columns(frame, spec)
    points = prior_subject_points(spec.prior)
    columns = {PRIOR_APS: prior_average(spec.prior, points), OUTCOME: outcome_value(spec.outcome)}
    for subject in spec.prior.subject_differences:
        columns[f"cva_prior_{subject}"] = points[subject]
    return frame.withColumns(columns)


def term_expressions(spec: ModelSpec) -> dict[str, Column]:
    """Every non-intercept term as a double expression over a frame from
    :func:`with_prior_and_outcome` joined to the school-level columns."""
    aps = F.col(PRIOR_APS)
    terms: dict[str, Column] = {"prior_aps": aps}
    if spec.prior.square:
        terms["prior_aps_sq"] = aps * aps
    for subject in spec.prior.subject_differences:
        terms[f"prior_{subject}_minus_aps"] = F.col(f"cva_prior_{subject}") - aps
    for categorical in spec.categorical:
        code = F.col(categorical.column)
        for term, codes in categorical.levels:
            terms[term] = F.when(code.isNull(), F.lit(None).cast("double")).when(
                code.isin(*codes), F.lit(1.0)).otherwise(F.lit(0.0))
    for name in spec.pupil_terms:
        terms[name] = F.col(name).cast("double")
    for name, left, right in spec.interaction_terms:
        terms[name] = terms[left] * terms[right]
    school = {"school_mean_prior_aps": F.col(_SCHOOL_MEAN), "school_sd_prior_aps": F.col(_SCHOOL_SD)}
    for name in spec.school_terms:
        terms[name] = school[name]
    return {t: terms[t] for t in spec.term_names if t != "intercept"}


def _school_mean_and_sd(value: Column) -> list[Column]:
    """The mean and population SD of a school's values, the same whatever the order its
    pupils are added in (valueadded.sums): from the exact sums of the values and of their
    squares, SD = sqrt((sum x^2 - mean x sum x) / n), and 0 when the values are all equal."""
    n = F.count(value).cast("double")
    total, squares = sums.exact_sum(value), sums.exact_sum(value * value)
    mean = F.when(n > 0, total / n)
    variance = F.when(n > 0, (squares - total * mean) / n)
    sd = F.when(F.min(value) == F.max(value), F.lit(0.0)).when(n > 0, F.sqrt(F.greatest(variance, F.lit(0.0))))
    return [mean.alias(_SCHOOL_MEAN), sd.alias(_SCHOOL_SD)]


def with_design(frame: DataFrame, spec: ModelSpec, group: str = "school_id", school_rows: DataFrame | None = None) -> DataFrame:
    """Add one ``cva_x_<term>`` double column per non-intercept term of the spec.

    `frame` is one row per pupil (from :func:`with_prior_and_outcome`). The school-level
    terms are computed over `school_rows`, the pupils in the model: by default the frame's
    own rows, which is right when the frame holds exactly the model's pupils.
    """
    if spec.school_terms:
        school = (frame if school_rows is None else school_rows).groupBy(group).agg(*_school_mean_and_sd(F.col(PRIOR_APS)))
        frame = frame.join(F.broadcast(school), on=group, how="left")
    design = frame.withColumns({design_column(t): e for t, e in term_expressions(spec).items()})
    return design.drop(_SCHOOL_MEAN, _SCHOOL_SD)
