"""KS2 outcomes for progress: scaled scores, nominal scores and who is excluded (seed 001).

Reading and maths (tests), for a pupil's row of ks2_results:

| test code | teacher assessment | outcome for progress |
| --- | --- | --- |
| S | any | the scaled score (80-120) |
| B, or N | BLW with a P-scale or NOTSEN | the P-scale's nominal score (59-71) |
| B, or N | PKF, PKE, PKG | 73, 76, 79 |
| N | HNM or EXS | 79: sat the test but scored too low for a scaled score |
| B | HNM, EXS, other | none: `no_nominal_score` |
| A, D, M, U, Q | any | none: `test_code_<code>` (an HNM pupil who did not sit is coded A) |

Writing (teacher assessed): GDS, EXS, WTS have points (113, 103, 90); BLW with a P-scale
and PKF/PKE/PKG take the nominal scores above; A, D, M, L, Q exclude (`writing_ta_<code>`).

Nominal scores count in progress only, never in average scaled scores. All values come
from the year's table (conf/reference/ks2/<year>.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import Column
from pyspark.sql import functions as F

from valueadded.measures.prior_attainment import code_points


@dataclass(frozen=True)
class NominalScores:
    """The year's nominal scores for pupils without a scaled score."""

    pscale: dict[str, float]
    pre_key_stage: dict[str, float]
    sat_without_scaled_score: float
    sat_without_scaled_score_ta: tuple[str, ...]


def _below_standard_score(ta: Column, pscale: Column, nominal: NominalScores) -> Column:
    return F.when(ta == "BLW", code_points(pscale, nominal.pscale)).otherwise(code_points(ta, nominal.pre_key_stage))


def subject_test_outcome(subject: str, nominal: NominalScores, excluded_codes: tuple[str, ...]) -> tuple[Column, Column]:
    """(outcome, exclusion reason) for a KS2 test subject: reading or maths."""
    code, score = F.col(f"{subject}_test_code"), F.col(f"{subject}_scaled_score").cast("double")
    ta, pscale = F.col(f"{subject}_ta"), F.col(f"{subject}_pscale")
    below = _below_standard_score(ta, pscale, nominal)
    sat_low = F.when(ta.isin(list(nominal.sat_without_scaled_score_ta)), F.lit(float(nominal.sat_without_scaled_score)))
    outcome = (
        F.when(code == "S", score)
        .when(code == "B", below)
        .when(code == "N", F.coalesce(sat_low, below))
    )
    reason = (
        F.when(code.isin(list(excluded_codes)), F.concat(F.lit("test_code_"), code))
        .when(outcome.isNull(), F.lit("no_nominal_score"))
    )
    return F.when(reason.isNull(), outcome), reason


def writing_outcome(points: dict[str, float], nominal: NominalScores, excluded_ta: tuple[str, ...]) -> tuple[Column, Column]:
    """(outcome, exclusion reason) for KS2 writing, from the teacher assessment."""
    ta, pscale = F.col("writing_ta"), F.col("writing_pscale")
    outcome = F.coalesce(code_points(ta, points), _below_standard_score(ta, pscale, nominal))
    reason = (
        F.when(ta.isin(list(excluded_ta)), F.concat(F.lit("writing_ta_"), ta))
        .when(outcome.isNull(), F.lit("no_nominal_score"))
    )
    return F.when(reason.isNull(), outcome), reason
