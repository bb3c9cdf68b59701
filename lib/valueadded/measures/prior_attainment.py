"""Prior attainment: KS1 points and average point score, and prior attainment groups.

KS1 average point score (APS) = ((reading + writing) / 2 + maths) / 2: reading and
writing are averaged first, so maths carries half the weight (SPEC 2.1). Example:
R = 2B (15), W = 1 (9), M = 3 (21) gives ((15 + 9) / 2 + 21) / 2 = 16.5.

A pupil has a KS1 start point only when all three subjects have a code with points.
The reason for a missing start point, in order: `no_ks1_start_point` (a subject is
missing, or coded A, D or M), `ks1_code_without_points` (a code the year's table gives
no points, e.g. a P-scale when none are configured).
"""

from __future__ import annotations

from pyspark.sql import Column
from pyspark.sql import functions as F

KS1_SUBJECTS = ("reading", "writing", "maths")


def code_points(code: Column, points: dict[str, float]) -> Column:
    """Points of a code from a table; null for a code not in the table."""
    mapping = F.create_map(*[item for key, value in sorted(points.items()) for item in (F.lit(key), F.lit(float(value)))])
    return F.element_at(mapping, code)


def ks1_average_point_score(reading: Column, writing: Column, maths: Column) -> Column:
    return ((reading + writing) / 2 + maths) / 2


def ks1_start_point(points: dict[str, float], no_result: tuple[str, ...]) -> tuple[Column, Column]:
    """The KS1 APS (null without a start point) and the reason it is missing.

    Reads the columns ks1_reading, ks1_writing, ks1_maths.
    """
    codes = [F.col(f"ks1_{subject}") for subject in KS1_SUBJECTS]
    subject_points = [code_points(code, points) for code in codes]
    missing = F.lit(False)
    for code in codes:
        missing = missing | code.isNull() | code.isin(list(no_result))
    unpriced = F.lit(False)
    for value in subject_points:
        unpriced = unpriced | value.isNull()
    reason = F.when(missing, F.lit("no_ks1_start_point")).when(unpriced, F.lit("ks1_code_without_points"))
    aps = F.when(reason.isNull(), ks1_average_point_score(*subject_points))
    return aps, reason


def prior_attainment_group(score: Column, lower_bounds: tuple[float, ...]) -> Column:
    """Group k (1-based) when lower_bounds[k-1] <= score < lower_bounds[k]; null for a null score.

    A score below the first bound is out of the table and gets no group (null), which
    the caller reports; bounds must be strictly increasing (checked at config load).
    """
    group = F.lit(None).cast("int")
    for index, bound in enumerate(lower_bounds, start=1):
        group = F.when(score >= F.lit(float(bound)), F.lit(index)).otherwise(group)
    return group
