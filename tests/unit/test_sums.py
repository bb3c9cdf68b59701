"""valueadded.sums: sums of doubles that come out the same whatever order Spark adds them in.

The reference is exact arithmetic in Python (fractions, and `statistics.stdev`, which
works in fractions too), not Spark's own sums: those depend on the order.
"""

from __future__ import annotations

import math
import random
import statistics
from fractions import Fraction

import pytest
from pyspark.sql import functions as F

from valueadded import sums

GROUPS = 6


def _values(seed: int, count: int) -> list[float]:
    """Doubles of every size a release adds: scores, points, progress, small fractions."""
    rng = random.Random(seed)
    return [rng.choice((-1, 1)) * rng.choice((rng.uniform(4, 500), rng.uniform(0, 4), rng.uniform(0, 1e-3))) for _ in range(count)]


def _aggregated(frame):
    return {
        row.g: row
        for row in frame.groupBy("g").agg(
            sums.exact_sum(F.col("x")).alias("exact"), sums.exact_mean(F.col("x")).alias("mean"), F.sum("x").alias("spark")
        ).collect()
    }


def test_sums_and_means_are_the_same_whatever_the_row_order_and_partitioning(spark):
    rows = [(index % GROUPS, value) for index, value in enumerate(_values(1, 2400))]
    frame = spark.createDataFrame(rows, "g int, x double")
    variants = [
        frame.coalesce(1),
        frame.repartition(7),
        frame.orderBy(F.rand(seed=11)).repartition(3),
        frame.orderBy(F.desc("x")).coalesce(1),
    ]
    results = [_aggregated(variant) for variant in variants]
    # The reason for the module: Spark's own sum of the same rows moves with the order.
    assert any(other[g].spark != results[0][g].spark for other in results[1:] for g in range(GROUPS))
    for other in results[1:]:
        for g in range(GROUPS):
            assert (other[g].exact, other[g].mean) == (results[0][g].exact, results[0][g].mean), g


def test_a_sum_of_values_from_4_to_500_is_the_exact_sum_rounded_once(spark):
    """Such values lie on the grid already (nothing of them is dropped), and under 512
    their top part is 0: the parts' sums make one double with one rounding."""
    rng = random.Random(2)
    values = [rng.choice((-1, 1)) * rng.uniform(4, 500) for _ in range(3000)]
    rows = [(index % GROUPS, value) for index, value in enumerate(values)]
    got = _aggregated(spark.createDataFrame(rows, "g int, x double").repartition(5))
    for g in range(GROUPS):
        group = [value for index, value in enumerate(values) if index % GROUPS == g]
        exact = sum(Fraction(value) for value in group)
        assert got[g].exact == float(exact)
        assert got[g].mean == pytest.approx(float(exact / len(group)), rel=1e-15, abs=0)


def test_a_sum_with_large_values_is_within_one_unit_in_the_last_place_of_the_exact_sum(spark):
    """Values of 512 or more (squares of scores, CVA scores near 1000) fill the top part."""
    rng = random.Random(4)
    values = [rng.uniform(512, 1e5) for _ in range(3000)]
    rows = [(index % GROUPS, value) for index, value in enumerate(values)]
    frame = spark.createDataFrame(rows, "g int, x double")
    got, again = _aggregated(frame.repartition(5)), _aggregated(frame.orderBy(F.rand(seed=3)).coalesce(1))
    for g in range(GROUPS):
        exact = float(sum(Fraction(value) for index, value in enumerate(values) if index % GROUPS == g))
        assert abs(got[g].exact - exact) <= math.ulp(exact)
        assert again[g].exact == got[g].exact


def test_a_single_value_comes_back_as_it_was_or_within_half_a_unit(spark):
    values = [123.456789012345, -4.0000000000000036, 7.25, 90.0, 1e6 + 0.1, 0.1, -3.3333333333333335, 1e-300]
    frame = spark.createDataFrame([(index, value) for index, value in enumerate(values)], "g int, x double")
    got = {row.g: row.s for row in frame.groupBy("g").agg(sums.exact_sum(F.col("x")).alias("s")).collect()}
    for index, value in enumerate(values):
        if abs(value) >= 4:
            assert got[index] == value
        else:
            assert abs(got[index] - value) <= 2.0**-51


def test_the_driver_gets_the_exact_sum_and_the_sd_of_statistics_stdev(spark):
    values = [100 + value for value in _values(3, 5000)]
    frame = spark.createDataFrame([(value,) for value in values], "x double").repartition(4)
    row = frame.agg(*sums.moment_sums(F.col("x"))).first()
    total = sums.total(row, "_sum")
    assert abs(total - sum(Fraction(value) for value in values)) <= len(values) * Fraction(1, 2**51)
    mean, sd = sums.mean_and_sd(row)
    assert mean == pytest.approx(statistics.fmean(values), rel=1e-15)
    assert sd == pytest.approx(statistics.stdev(values), rel=1e-13)


@pytest.mark.parametrize("value", [0.1, 7.0, -123.456])
def test_the_sd_of_equal_values_is_0_and_of_one_value_none(spark, value):
    """0.1's square is rounded before it is summed: the sums alone would leave a trace."""
    frame = spark.createDataFrame([(value,)] * 7, "x double")
    row = frame.agg(*sums.moment_sums(F.col("x"))).first()
    assert sums.mean_and_sd(row)[1] == 0.0
    assert sums.sample_sd(1, Fraction(value), Fraction(value * value), True) is None


def test_null_values_are_left_out_and_a_nan_is_never_a_number(spark):
    frame = spark.createDataFrame([(1, None), (1, 5.0), (2, None), (3, float("nan")), (3, 4.0)], "g int, x double")
    got = _aggregated(frame)
    assert (got[1].exact, got[1].mean) == (5.0, 5.0)
    assert (got[2].exact, got[2].mean) == (None, None)
    assert math.isnan(got[3].exact) and math.isnan(got[3].mean)
    row = frame.where(F.col("g") == 3).agg(*sums.sum_parts(F.col("x"), "s")).first()
    with pytest.raises(ValueError, match="NaN or an infinity"):
        sums.total(row, "s")
