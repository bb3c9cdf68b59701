"""KS2 prior attainment for the KS4 measures, and its prior attainment group.

Per subject (reading, maths), the KS2 score used as prior attainment is, by test code:

- `S`: the scaled score (80-120);
- `B` (below the standard of the test): the nominal score of the pre-key-stage teacher
  assessment (PKF, PKE, PKG), or for teacher assessment BLW the nominal score of its
  P-scale or NOTSEN;
- `N` (sat the test, no scaled score) with a configured teacher assessment (HNM, EXS):
  its nominal score (79 in 2024); with a pre-key-stage or BLW assessment, the nominal
  score of that assessment, as for `B`;
- anything else: none. That is A, D, M, U and Q, no KS2 record (null code), and a B or N
  whose assessment has no nominal score (e.g. B with HNM, N with GDS, BLW without a
  P-scale).

This is the rule the KS2 measures score reading and maths by (inclusion.py), so a pupil's
KS2 outcome is the same number in KS2 progress, in KS4 prior attainment and in CVA.

KS2 prior attainment = mean of the two subjects' scores, rounded down to a multiple of
the year's step (0.5). Whole-number scores give an exact multiple of 0.5, so the rounding
only matters for a fractional nominal score: 105 and 106 give 105.5, 104 and 105 give
104.5. A pupil without a score in either subject has no prior attainment (reason
`no_prior_attainment`) and no group. The group is the one whose configured range
(lowest to highest, both inclusive) holds the prior attainment.
"""

from __future__ import annotations

import math

from pyspark.sql import Column
from pyspark.sql import functions as F

from valueadded.measures.inclusion import ks2_test_score
from valueadded.measures.ks4_tables import KS4YearTables

KS2_SUBJECTS = ("reading", "maths")
NO_PRIOR_ATTAINMENT = "no_prior_attainment"


def ks2_prior_attainment(tables: KS4YearTables) -> Column:
    """Mean of the KS2 reading and maths scores, rounded down to the step; null without both."""
    reading, maths = (ks2_test_score(f"ks2_{subject}", tables.nominal_scores) for subject in KS2_SUBJECTS)
    step = F.lit(tables.prior_attainment_step)
    return (F.floor((reading + maths) / 2 / step) * step).cast("double")


def prior_attainment_group(prior: Column, groups: tuple[tuple[float, float], ...], step: float) -> Column:
    """The number (1-based) of the group whose [lowest, highest] range holds `prior`; null otherwise.

    `prior` is a multiple of `step`, as ks2_prior_attainment makes it. Every multiple in the
    table's span gets its group here, in Python, with the same comparisons, and the pupil's
    group is one lookup of that table: a branch per group (34 in 2024) made the generated
    code of the KS4 pupils too long for HotSpot to compile (over 8,000 bytes of bytecode).
    """
    numbers = {}
    for k in range(math.floor(groups[0][0] / step) - 1, math.ceil(groups[-1][1] / step) + 2):
        value = float(k) * step  # the double ks2_prior_attainment computes for this multiple
        number = next((n for n, (lowest, highest) in enumerate(groups, start=1) if lowest <= value <= highest), None)
        if number is not None:
            numbers[value] = number
    table = F.create_map(*[item for value, number in numbers.items() for item in (F.lit(value), F.lit(number))])
    return F.element_at(table, prior)
