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

from typing import Mapping

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from valueadded.cva.design import OUTCOME, design_column
from valueadded.cva.spec import STAGES

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


def _weighted_sum(terms: list[tuple[str, float]], constant: float) -> Column:
    """constant + sum of column x coefficient, added left to right (0.0 with no terms)."""
    total = F.lit(constant)
    for term, coefficient in terms:
        total = total + F.col(design_column(term)) * F.lit(coefficient)
    return total


def predict(
    frame: DataFrame,
    coefficients: Mapping[str, float],
    stage_of: Mapping[str, str],
    valid_range: tuple[float, float],
) -> DataFrame:
    """Add the CVA columns to a design frame (from valueadded.cva.design.with_design).

    Adds ``cva_prior_attainment``, ``cva_characteristics``, ``cva_school_level``,
    ``cva_range_adjustment``, ``cva_prediction`` and ``cva_residual`` = ``cva_outcome`` -
    ``cva_prediction``; one row per pupil, nothing dropped.

    The same arithmetic as :func:`stage_components`, as Spark column expressions: a
    prediction is a few dozen multiply-adds per pupil, which Spark's generated code does
    in place, where a pandas UDF would ship every design column to Python and back.
    """
    _check_stages(stage_of)
    coefficients = {t: float(v) for t, v in coefficients.items()}
    terms = [t for t in coefficients if t != "intercept"]
    missing = [design_column(t) for t in terms if design_column(t) not in frame.columns]
    if missing:
        raise KeyError(f"design has no column(s) {missing}")
    low, high = float(valid_range[0]), float(valid_range[1])
    intercept_stage = stage_of.get("intercept", "prior_attainment")
    parts = {
        stage: _weighted_sum(
            [(t, coefficients[t]) for t in terms if stage_of[t] == stage],
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
        F.count(F.lit(1)).cast("int").alias("n"), F.avg(RESIDUAL).alias("mean_residual")
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
