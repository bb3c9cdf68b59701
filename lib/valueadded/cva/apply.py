"""CVA predictions in the Ready Reckoner's four stages, and shrunken school CVA.

A pupil's prediction is built up as seed 004 shows it (paragraphs 16-30):

1. ``prior_attainment``: the constant plus the prior attainment terms (average point score,
   its square, each subject's difference from the average);
2. ``characteristics``: the pupil characteristic terms, their interactions included;
3. ``school_level``: the school's mean and SD of prior attainment (KS2-4 only);
4. ``range_adjustment``: the change that keeps the prediction inside the outcome's valid
   range. The sum of stages 1-3 is clipped to ``[low, high]`` of the specification, so the
   adjustment is 0 inside the range, ``low - sum`` below it and ``high - sum`` above it.
   (KS2: seed 004 paragraph 28's constraint to the permissible range. KS4: DfE adjusted
   predictions "close to" the ends of the range by a method it did not publish; we clip
   at the ends, the same rule as KS2, and document the difference.)

``prediction`` = the sum of the four; the pupil's CVA = actual outcome - prediction.

School CVA (seed 004 paragraphs 32-37): the mean of the school's pupils' CVA scores
multiplied by the shrinkage factor k = sigma2_school / (sigma2_school + sigma2_pupil / n),
with the 95% interval effect +/- 1.96 sqrt(sigma2_school sigma2_pupil / (sigma2_pupil +
n sigma2_school)), published centred on the specification's ``school_score_centre`` (100
for KS2, 1000 for KS4). Without any range adjustment in the school, the mean pupil CVA is
the mean REML residual and the score is the BLUP of the school's random intercept.

The arithmetic is plain pandas/numpy (:func:`term_contributions`, :func:`stage_components`),
tested on its own; :func:`predict` is the same arithmetic as Spark column expressions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from valueadded import sums
from valueadded.cva.design import OUTCOME, design_column
from valueadded.cva.spec import STAGES
from valueadded.measures.prior_attainment import code_points

if TYPE_CHECKING:
    from valueadded.cva.spec import ModelSpec

Z_95 = 1.959963984540054
COMPONENT_COLUMNS = {
    "prior_attainment": "cva_prior_attainment",
    "characteristics": "cva_characteristics",
    "school_level": "cva_school_level",
    "range_adjustment": "cva_range_adjustment",
    "prediction": "cva_prediction",
}
RESIDUAL = "cva_residual"


def term_contributions(design: pd.DataFrame, coefficients: Mapping[str, float]) -> pd.DataFrame:
    """Each term's contribution (value x coefficient) to each pupil's prediction.

    Args:
        design: one row per pupil, one column per non-intercept term (the Ready Reckoner's
            inputs, e.g. ``prior_english_minus_aps`` = -1.96).
        coefficients: term -> coefficient, ``intercept`` included.

    Returns:
        One row per pupil, the columns ``intercept`` then the design's terms in
        coefficient order (e.g. ``prior_english_minus_aps`` = -1.96 x 2.330 = -4.5668).
    """
    terms = [t for t in coefficients if t != "intercept"]
    missing = [t for t in terms if t not in design.columns]
    if missing:
        raise KeyError(f"design has no column(s) for term(s) {missing}")
    values = design[terms].to_numpy(dtype=np.float64) * np.array([coefficients[t] for t in terms])
    out = pd.DataFrame(values, columns=terms, index=design.index)
    out.insert(0, "intercept", float(coefficients.get("intercept", 0.0)))
    return out


def stage_components(
    design: pd.DataFrame,
    coefficients: Mapping[str, float],
    stage_of: Mapping[str, str],
    valid_range: tuple[float, float],
) -> pd.DataFrame:
    """The four-stage prediction of each pupil.

    Args:
        design: one row per pupil, one column per non-intercept term.
        coefficients: term -> coefficient (``intercept`` included).
        stage_of: term -> one of ``prior_attainment``, ``characteristics``, ``school_level``.
        valid_range: (low, high) the prediction is kept within.

    Returns:
        One row per pupil (same index): ``prior_attainment``, ``characteristics``,
        ``school_level``, ``range_adjustment``, ``prediction`` (their sum, inside the range).
    """
    _check_stages(stage_of)
    low, high = valid_range
    terms = [t for t in coefficients if t != "intercept"]
    values = design[terms].to_numpy(dtype=np.float64) if terms else np.zeros((len(design), 0))
    beta = np.array([coefficients[t] for t in terms], dtype=np.float64)
    out = {}
    for stage in STAGES:
        idx = [k for k, t in enumerate(terms) if stage_of[t] == stage]
        part = values[:, idx] @ beta[idx] if idx else np.zeros(len(design))
        if stage_of.get("intercept", "prior_attainment") == stage:
            part = part + float(coefficients.get("intercept", 0.0))
        out[stage] = part
    unadjusted = out["prior_attainment"] + out["characteristics"] + out["school_level"]
    prediction = np.clip(unadjusted, low, high)
    out["range_adjustment"] = prediction - unadjusted
    out["prediction"] = prediction
    return pd.DataFrame(out, index=design.index)


def _check_stages(stage_of: Mapping[str, str]) -> None:
    unknown = sorted({s for s in stage_of.values() if s not in STAGES})
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; expected {list(STAGES)}")


def _code_lookup(code: Column, values: Mapping[str, float]) -> Column:
    """The value of the pupil's code (0.0 for a code not listed; null for a null code)."""
    return F.when(code.isNotNull(), F.coalesce(code_points(code, dict(values)), F.lit(0.0)))


def contributions(coefficients: Mapping[str, float], spec: "ModelSpec | None" = None) -> list[tuple[str, Column]]:
    """Each term's contribution (value x coefficient) as a column expression, in term order.

    Without `spec`, one product per term over its design column. With it, the indicator
    terms of a categorical characteristic are one lookup instead: the coefficient of the
    level the pupil's code is in (0 for the reference), and an interaction of a number with
    a categorical is the number times such a lookup. A pupil has at most one level of a
    categorical, so the other terms of the block add exactly 0 and the sum is the same.
    The block stands where its first term stands. It is the same arithmetic in far less
    generated code: with one branch per ethnicity level and interaction, the national KS2
    prediction's generated method was over the 8,000 bytes HotSpot compiles.

    Returns:
        (first term of the block, contribution) pairs; a term without a coefficient (a
        dropped term) contributes nothing.
    """
    terms = [t for t in coefficients if t != "intercept"]
    blocks: dict[str, tuple[list[str], Column]] = {}  # a block's terms -> its lookup
    if spec is not None:
        for categorical in spec.categorical:
            level_terms = [term for term, _ in categorical.levels]
            code = F.col(categorical.column)
            values = {c: coefficients[term] for term, codes in categorical.levels if term in coefficients for c in codes}
            blocks[categorical.name] = (level_terms, _code_lookup(code, values))
        for left, right in spec.interactions:
            operands = [o for o in (left, right) if any(c.name == o for c in spec.categorical)]
            if len(operands) != 1:
                continue  # number x number, or categorical x categorical: one product per term
            categorical = next(c for c in spec.categorical if c.name == operands[0])
            other = right if operands[0] == left else left
            names = {term: (f"{term}_x_{other}" if operands[0] == left else f"{other}_x_{term}") for term, _ in categorical.levels}
            values = {c: coefficients[names[term]] for term, codes in categorical.levels if names[term] in coefficients for c in codes}
            blocks[f"{left}_x_{right}"] = (list(names.values()), F.col(design_column(other)) * _code_lookup(F.col(categorical.column), values))
    block_of = {term: key for key, (members, _) in blocks.items() for term in members}
    out, done = [], set()
    for term in terms:
        key = block_of.get(term)
        if key is None:
            out.append((term, F.col(design_column(term)) * F.lit(coefficients[term])))
        elif key not in done:
            done.add(key)
            out.append((term, blocks[key][1]))
    return out


def _weighted_sum(parts: list[Column], constant: float) -> Column:
    """constant + the contributions, added left to right (the constant alone with none)."""
    total = F.lit(constant)
    for part in parts:
        total = total + part
    return total


def predict(
    frame: DataFrame,
    coefficients: Mapping[str, float],
    stage_of: Mapping[str, str],
    valid_range: tuple[float, float],
    spec: "ModelSpec | None" = None,
) -> DataFrame:
    """Add the CVA columns to a design frame (from valueadded.cva.design.with_design).

    Adds ``cva_prior_attainment``, ``cva_characteristics``, ``cva_school_level``,
    ``cva_range_adjustment``, ``cva_prediction`` and ``cva_residual`` = ``cva_outcome`` -
    ``cva_prediction``; one row per pupil, nothing dropped.

    The same arithmetic as :func:`stage_components`, as Spark column expressions: a
    prediction is a few dozen multiply-adds per pupil, which Spark's generated code does
    in place, where a pandas UDF would ship every design column to Python and back.

    Args:
        spec: the model the coefficients are of. With it, each categorical's terms are one
            lookup of the pupil's code (:func:`contributions`): the same numbers, and far
            less generated code; the frame must then hold the categoricals' code columns.
    """
    _check_stages(stage_of)
    coefficients = {t: float(v) for t, v in coefficients.items()}
    terms = [t for t in coefficients if t != "intercept"]
    missing = [design_column(t) for t in terms if design_column(t) not in frame.columns]
    if missing:
        raise KeyError(f"design has no column(s) {missing}")
    low, high = float(valid_range[0]), float(valid_range[1])
    intercept_stage = stage_of.get("intercept", "prior_attainment")
    terms_with_parts = contributions(coefficients, spec)
    parts = {
        stage: _weighted_sum(
            [part for term, part in terms_with_parts if stage_of[term] == stage],
            coefficients.get("intercept", 0.0) if stage == intercept_stage else 0.0,
        )
        for stage in STAGES
    }
    staged = frame.withColumns({COMPONENT_COLUMNS[stage]: part for stage, part in parts.items()})
    unadjusted = F.col(COMPONENT_COLUMNS["prior_attainment"]) + F.col(COMPONENT_COLUMNS["characteristics"])
    unadjusted = unadjusted + F.col(COMPONENT_COLUMNS["school_level"])
    prediction = F.least(F.greatest(unadjusted, F.lit(low)), F.lit(high))
    staged = staged.withColumns({
        COMPONENT_COLUMNS["range_adjustment"]: prediction - unadjusted,
        COMPONENT_COLUMNS["prediction"]: prediction,
    })
    return staged.withColumn(RESIDUAL, F.col(OUTCOME) - F.col(COMPONENT_COLUMNS["prediction"]))


def shrunken_school_scores(
    predicted: DataFrame,
    sigma2_school: float,
    sigma2_pupil: float,
    centre: float,
    group: str = "school_id",
    z: float = Z_95,
) -> DataFrame:
    """One row per school: n, shrinkage, score (centre + k x mean pupil CVA), lower, upper.

    `predicted` is one row per pupil in the model, with ``cva_residual``. A zero school
    variance (a boundary fit) gives k = 0: every school scores the centre, with a zero-width
    interval (the cva_model table reports the boundary).
    """
    s2b, s2e = float(sigma2_school), float(sigma2_pupil)
    n = F.col("n").cast("double")
    shrinkage = F.lit(s2b) / (F.lit(s2b) + F.lit(s2e) / n) if s2b > 0 else F.lit(0.0)
    half_width = F.lit(z) * F.sqrt(F.lit(s2b * s2e) / (F.lit(s2e) + n * F.lit(s2b)))
    by_school = predicted.groupBy(group).agg(
        F.count(F.lit(1)).cast("int").alias("n"), sums.exact_mean(F.col(RESIDUAL)).alias("mean_residual")
    )
    return (
        by_school.withColumn("shrinkage", shrinkage)
        .withColumn("effect", F.col("shrinkage") * F.col("mean_residual"))
        .select(
            group,
            "n",
            "mean_residual",
            "shrinkage",
            (F.lit(float(centre)) + F.col("effect")).alias("score"),
            (F.lit(float(centre)) + F.col("effect") - half_width).alias("lower"),
            (F.lit(float(centre)) + F.col("effect") + half_width).alias("upper"),
        )
    )
