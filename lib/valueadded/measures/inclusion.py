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
    """The year's nominal scores for KS2 outcomes without a scaled score.

    Attributes:
        pscale: teacher assessment BLW: P-scale (or NOTSEN) -> score.
        pre_key_stage: pre-key-stage teacher assessment (PKF, PKE, PKG) -> score.
        sat_without_scaled_score: the score of test code N with one of
            `sat_without_scaled_score_ta` (HNM, EXS).
    """

    pscale: dict[str, float]
    pre_key_stage: dict[str, float]
    sat_without_scaled_score: float
    sat_without_scaled_score_ta: tuple[str, ...]

    def lowest(self) -> float:
        return min([*self.pscale.values(), *self.pre_key_stage.values(), self.sat_without_scaled_score])

    def by_code_and_assessment(self) -> dict[str, float]:
        """"<test code> <teacher assessment>" -> score, for codes B and N; BLW, scored by
        its P-scale, is not in it (unless N with BLW is configured as sat without a score)."""
        table = {f"{code} {ta}": score for code in ("B", "N") for ta, score in self.pre_key_stage.items() if ta != "BLW"}
        table.update({f"N {ta}": self.sat_without_scaled_score for ta in self.sat_without_scaled_score_ta})
        return table


def _below_standard_score(ta: Column, pscale: Column, nominal: NominalScores) -> Column:
    return F.when(ta == "BLW", code_points(pscale, nominal.pscale)).otherwise(code_points(ta, nominal.pre_key_stage))


def ks2_test_score(prefix: str, nominal: NominalScores) -> Column:
    """A KS2 reading or maths test outcome as a score (the table above); null when it has none.

    The one rule for a KS2 test score wherever one is used: KS2 progress, KS2 prior
    attainment for KS4, and the CVA models' KS2 outcomes and prior attainment. Written as
    two table lookups rather than a branch per case: the CVA models compute it inside
    long generated methods, which must stay under the JVM's limit for compiling one
    (tests/unit/test_cva_release.py).

    Args:
        prefix: the columns' prefix: `reading` reads reading_test_code, reading_scaled_score,
            reading_ta and reading_pscale; `ks2_reading` the KS4 pupils' KS2 columns.
    """
    code, score = F.col(f"{prefix}_test_code"), F.col(f"{prefix}_scaled_score").cast("double")
    ta, pscale = F.col(f"{prefix}_ta"), F.col(f"{prefix}_pscale")
    by_assessment = code_points(F.concat(code, F.lit(" "), ta), nominal.by_code_and_assessment())
    by_pscale = F.when(code.isin("B", "N") & (ta == "BLW"), code_points(pscale, nominal.pscale))
    return F.when(code == "S", score).otherwise(F.coalesce(by_assessment, by_pscale))


def subject_test_outcome(subject: str, nominal: NominalScores, excluded_codes: tuple[str, ...]) -> tuple[Column, Column]:
    """(outcome, exclusion reason) for a KS2 test subject: reading or maths."""
    code = F.col(f"{subject}_test_code")
    outcome = ks2_test_score(subject, nominal)
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
