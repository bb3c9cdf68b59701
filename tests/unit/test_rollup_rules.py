"""Roll-up methodology as scenario tables a statistician can read (tests/scenarios/rollup/).

Each test feeds a hand-made table through the release's own functions and compares with
the hand-worked expectation in the same CSV: the trust rule (which schools count, with
what weight), trust figures (weighting, the 3-schools rule, intervals), suppression at 5
and 6 pupils (and secondary suppression), identification at the 10% / 20% boundaries
(with and without last year's table) and trends.
"""

from __future__ import annotations

import csv
import math
import dataclasses
import datetime as dt
from pathlib import Path

import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

from valueadded.config import load_release_config
from valueadded.io.delta_store import TableStore
from valueadded.io.schemas import UNSUPPRESSED_MEASURES
from valueadded.rollup import aggregate, compare, history, identify, suppression, trusts
from valueadded.rollup.pupils import value_column

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios" / "rollup"
YEAR = 2024
ROLLUP = load_release_config().rollup
MEASURE = "progress_reading"
Z = 1.96


def _rows(name: str) -> list[dict[str, str]]:
    with (SCENARIOS / name).open() as handle:
        return list(csv.DictReader(handle))


def _date(text: str) -> dt.date | None:
    return dt.date.fromisoformat(text) if text else None


def _float(text: str) -> float | None:
    return float(text) if text else None


def _schools(spark, rows):
    """A schools frame (school_id, provision, sector, la_code, region_code) for the scenario schools."""
    ids = sorted({(r["school_id"], r["provision"]) for r in rows})
    return spark.createDataFrame(
        [(school, provision, "state_funded", "LA1", "R1") for school, provision in ids],
        "school_id string, provision string, sector string, la_code string, region_code string",
    )


def _membership(spark, rows):
    return spark.createDataFrame(
        [(r["school_id"], r["trust_id"], f"Trust {r['trust_id']}", _date(r["join_date"]), _date(r.get("leave_date", ""))) for r in rows],
        "school_id string, trust_id string, trust_name string, join_date date, leave_date date",
    )


# ----------------------------------------------------------------------------- trust rule


def test_which_schools_count_towards_their_trust_and_their_weights(spark):
    rows = _rows("trust_rule.csv")
    found = {
        r.school_id: r
        for r in trusts.school_trusts(_membership(spark, rows), _schools(spark, rows), YEAR, ROLLUP.trusts).collect()
    }
    expected = {r["school_id"]: r for r in rows if r["expected_trust"]}
    assert set(found) == set(expected), "schools in a trust on 31 August 2024"
    for school, row in expected.items():
        got = found[school]
        assert got.trust_id == row["expected_trust"], row["case"]
        assert got.full_years_in_trust == int(row["expected_full_years"]), row["case"]
        assert got.in_trust_figure == (row["expected_in_trust_figure"] == "true"), row["case"]
        assert got.trust_weight == _float(row["expected_weight"]), row["case"]


def test_weights_come_from_the_configuration():
    rules = dataclasses.replace(ROLLUP.trusts, time_in_trust_weights=((3, 1.0), (5, 2.0), (8, 3.0)))
    assert [rules.weight(years) for years in (2, 3, 4, 5, 7, 8, 20)] == [None, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0]


# ----------------------------------------------------------------------------- trust figures


def _trust_figures(spark):
    """Run the scenario pupils through cells, trust eligibility, level sums and figures."""
    rows = _rows("trust_pupils.csv")
    membership = _membership(spark, rows)
    schools = _schools(spark, rows)
    school_trusts = trusts.school_trusts(membership, schools, YEAR, ROLLUP.trusts)
    context = schools.join(school_trusts, on="school_id", how="left")
    pupils = spark.createDataFrame(
        [(r["school_id"], float(v)) for r in rows for v in r["pupil_values"].split(";")],
        f"school_id string, {value_column(MEASURE)} double",
    )
    cells = aggregate.school_cells(pupils, (MEASURE,), {})
    eligibility = aggregate.trust_eligibility(cells, context, ROLLUP.trusts.min_schools)
    sums = aggregate.level_sums(cells, context, eligibility.where(F.col("eligible")).select("trust_id", "measure"))
    sds = spark.createDataFrame([(MEASURE, 2.0)], "measure string, national_sd double")
    no_school_scores = spark.createDataFrame([], "school_id string, measure string, n int, score double, lower double, upper double, band string")
    figures = aggregate.figures(sums, no_school_scores, sds, {MEASURE: 1.0}, Z, ROLLUP.min_pupils)
    return eligibility, figures.where(F.col("level") == "trust")


def test_trust_figures_are_time_weighted_and_need_three_counted_schools(spark):
    eligibility, figures = _trust_figures(spark)
    eligible = {r.trust_id: r for r in eligibility.collect()}
    figure = {r.unit_id: r for r in figures.collect()}
    for row in _rows("trust_expected.csv"):
        trust = row["trust_id"]
        assert eligible[trust].eligible == (row["expected_eligible"] == "true"), trust
        assert eligible[trust].schools_in_trust == int(row["expected_schools_in_trust"]), trust
        assert eligible[trust].schools_counted == int(row["expected_schools_counted"]), trust
        if row["expected_eligible"] != "true":
            assert trust not in figure, f"{trust} has no figure: {row['working']}"
            continue
        got = figure[trust]
        assert got.n == int(row["expected_n"]), trust
        assert got.weighted_pupils == pytest.approx(float(row["expected_weighted_pupils"]), abs=1e-12)
        assert got.score == pytest.approx(float(row["expected_score"]), abs=1e-12), row["working"]
        assert got.lower == pytest.approx(float(row["expected_lower"]), abs=1e-12), row["working"]
        assert got.upper == pytest.approx(float(row["expected_upper"]), abs=1e-12), row["working"]
        assert got.band == row["expected_band"], trust


def test_higher_level_sums_equal_each_levels_own_sums_of_its_schools_cells(spark):
    """Trusts with their weights, authorities, regions and the nation, each summed directly in pandas."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(7)
    schools = pd.DataFrame({
        "school_id": [f"S{i:02d}" for i in range(40)],
        "la_code": [f"L{i % 6}" for i in range(40)],
        # L5 has schools in two regions: each figure still counts every school once.
        "region_code": ["R1" if i % 6 < 3 else "R2" if i % 6 < 5 or i % 2 else "R3" for i in range(40)],
        "trust_id": [None if i % 5 == 0 else f"T{i % 4}" for i in range(40)],
        "trust_weight": [None if i % 5 == 0 or i % 7 == 0 else float(1 + i % 3) for i in range(40)],
    })
    keys = [("all", "all", "m1"), ("all", "all", "m2"), ("sex", "f", "m1"), ("sex", "m", "m1")]
    cells = pd.DataFrame([
        {"school_id": school, "subgroup": g, "subgroup_value": v, "measure": m, "n": int(n),
         "value_sum": float(rng.normal(0, 3) * n), "value_sum_sq": float(rng.uniform(1, 20) * n) if g == "all" else None}
        for school in schools.school_id for (g, v, m) in keys for n in [rng.integers(0, 30)] if n > 0
    ])
    placed = cells.merge(schools, on="school_id")
    placed_frame = spark.createDataFrame(
        placed, "school_id string, subgroup string, subgroup_value string, measure string, n int, value_sum double, "
        "value_sum_sq double, la_code string, region_code string, trust_id string, trust_weight double",
    )
    got = aggregate.higher_level_sums(placed_frame).toPandas()

    expected = []
    for level, unit, weight in [("trust", "trust_id", "trust_weight"), ("la", "la_code", None), ("region", "region_code", None),
                                ("national", None, None)]:
        part = placed.assign(w=placed[weight] if weight else 1.0, unit_id=placed[unit] if unit else "national")
        part = part[part.w.notna()]
        for (unit_id, g, v, m), rows in part.groupby(["unit_id", "subgroup", "subgroup_value", "measure"]):
            expected.append({
                "level": level, "unit_id": unit_id, "subgroup": g, "subgroup_value": v, "measure": m,
                "schools": len(rows), "n": int(rows.n.sum()), "weighted_pupils": (rows.w * rows.n).sum(),
                "weighted_sq_pupils": (rows.w ** 2 * rows.n).sum(), "weighted_sum": (rows.w * rows.value_sum).sum(),
                "value_sum_sq": rows.value_sum_sq.sum(min_count=1),
            })
    key = list(aggregate.FIGURE_KEY)
    expected = pd.DataFrame(expected).sort_values(key).reset_index(drop=True)
    got = got.sort_values(key).reset_index(drop=True)
    assert list(got.columns) == [*aggregate.FIGURE_KEY, *aggregate.SUM_COLUMNS]
    assert set(got.level) == {"trust", "la", "region", "national"} and len(got) == len(expected)
    pd.testing.assert_frame_equal(got[key + ["schools", "n"]], expected[key + ["schools", "n"]], check_dtype=False)
    for column in ("weighted_pupils", "weighted_sq_pupils", "weighted_sum", "value_sum_sq"):
        np.testing.assert_allclose(got[column].astype(float), expected[column].astype(float), rtol=1e-12, err_msg=column)


def test_the_nations_and_regions_sums_do_not_depend_on_how_schools_are_grouped_below_them(spark):
    """The nation's sums are the one exact sum of its cells, bit for bit, however the
    schools fall into authorities and regions and in any row order or partitioning. The
    values are ~2^20 with bits down to 2^-32: their sums need more than a double's 53 bits,
    so any sum that rounds as it goes shows (Spark's own sum fails this test)."""
    import random

    rng = random.Random(11)
    cells = [(f"S{i:02d}", "all", "all", "m1", rng.randint(1, 40), rng.randint(-2**52, 2**52) * 2.0**-32,
              rng.randint(1, 2**52) * 2.0**-32) for i in range(60)]
    groupings = {
        "six authorities, one split over two regions": lambda i: (f"L{i % 6}", "R1" if i % 6 < 3 else f"R{2 + i % 2}"),
        "one authority": lambda i: ("L0", "R1"),
        "an authority per school": lambda i: (f"L{i}", f"R{i % 5}"),
    }
    schema = ("school_id string, subgroup string, subgroup_value string, measure string, n int, value_sum double, "
              "value_sum_sq double, la_code string, region_code string, trust_id string, trust_weight double")
    columns = ["schools", "n", "weighted_pupils", "weighted_sq_pupils", "weighted_sum", "value_sum_sq"]
    nationals = {}
    for name, place in groupings.items():
        for order in ("as listed", "reversed, eight partitions"):
            rows = [(*cell, *place(i), None, None) for i, cell in enumerate(cells)]
            frame = spark.createDataFrame(rows[::-1] if order != "as listed" else rows, schema)
            if order != "as listed":
                frame = frame.repartition(8)
            national = aggregate.higher_level_sums(frame).where(F.col("level") == aggregate.NATIONAL).collect()
            assert len(national) == 1
            nationals[(name, order)] = tuple(national[0][c] for c in columns)
    assert len(set(nationals.values())) == 1, nationals
    # And it is the exact sum (rounded once: the top part of these values is not 0, so within an ulp).
    exact = math.fsum(cell[5] for cell in cells)
    got = next(iter(nationals.values()))[columns.index("weighted_sum")]
    assert abs(got - exact) <= math.ulp(exact)


def test_school_cells_per_subgroup_value_and_only_for_the_configured_measures(spark):
    pupils = spark.createDataFrame(
        [("S1", 1.0, None, "yes"), ("S1", 3.0, None, "no"), ("S1", 5.0, None, "yes"), ("S1", None, 100.0, "yes")],
        f"school_id string, {value_column(MEASURE)} double, {value_column('cva')} double, disadvantaged string",
    )
    cells = aggregate.school_cells(pupils, (MEASURE, "cva"), {"disadvantaged": ("yes", "no")}, subgroup_measures=(MEASURE,))
    got = {(r.measure, r.subgroup, r.subgroup_value): (r.n, r.value_sum, r.value_sum_sq) for r in cells.collect()}
    assert got == {
        (MEASURE, "all", "all"): (3, 9.0, None),  # squares are summed for CVA measures only
        (MEASURE, "disadvantaged", "yes"): (2, 6.0, None),
        (MEASURE, "disadvantaged", "no"): (1, 3.0, None),
        ("cva", "all", "all"): (1, 100.0, 10000.0),  # cva is not broken down: no subgroup cells
    }


@pytest.mark.parametrize("key_stage", ["ks2", "ks4"])
def test_school_cells_and_higher_sums_run_compiled_code(spark, key_stage):
    """The cells of every configured measure and subgroup, and the sums above them, get
    generated code the JVM compiles (methods of at most 8,000 bytes; a longer one runs
    interpreted, for every pupil). Each exact sum (valueadded.sums) is three sums: with a
    range check on every value and the parts held as longs, the KS2 cells came to 10,365
    bytes and the KS4 ones to 8,975. The size depends on the expressions, not the rows."""
    from support.codegen import JVM_HUGE_METHOD_LIMIT, largest_generated_method
    from valueadded.rollup.measures import measure_names

    measures = measure_names(key_stage)
    dimensions = {d: ROLLUP.subgroups.values(d) for d in ROLLUP.subgroups.dimensions}
    wide = spark.createDataFrame(
        [("S1", *([1.0] * len(measures)), *(values[0] for values in dimensions.values()))],
        T.StructType(
            [T.StructField("school_id", T.StringType())]
            + [T.StructField(value_column(m), T.DoubleType()) for m in measures]
            + [T.StructField(d, T.StringType()) for d in dimensions]
        ),
    )
    cells = aggregate.marked_school_cells(wide, measures, dimensions, ROLLUP.subgroups.measures[key_stage], ROLLUP.min_pupils)
    context = spark.createDataFrame([("S1", "L1", "R1", "T1", 1.0)], "school_id string, la_code string, region_code string, "
                                    "trust_id string, trust_weight double")
    placed = aggregate.placed_cells(cells, context, spark.createDataFrame([], "trust_id string, measure string"))
    sizes = {"cells": largest_generated_method(cells), "higher sums": largest_generated_method(aggregate.higher_level_sums(placed))}
    assert max(sizes.values()) <= JVM_HUGE_METHOD_LIMIT, sizes


# ----------------------------------------------------------------------------- suppression


def test_suppression_at_5_and_6_pupils_and_secondary(spark):
    rows = _rows("suppression.csv")
    frame = spark.createDataFrame(
        [(r["case"], r["level"], r["unit_id"], r["subgroup"], r["subgroup_value"], MEASURE, int(r["n"]),
          r["earlier_year_withheld"] == "true")
         for r in rows],
        "case string, level string, unit_id string, subgroup string, subgroup_value string, measure string, n int, "
        "earlier_year_withheld boolean",
    )
    assert ROLLUP.min_pupils == 6
    got = {r.case: r for r in suppression.with_suppression(frame, ROLLUP.min_pupils).collect()}
    for row in rows:
        found = got[row["case"]]
        assert found.suppression_reason == (row["expected_reason"] or None), row["case"]
        assert found.suppressed == bool(row["expected_reason"]), row["case"]
        assert found.trend_suppression_reason == (row["expected_trend_reason"] or None), row["case"]


def test_school_cells_marked_as_built_get_the_figures_decisions_without_a_second_shuffle(spark):
    """The release marks the school cells (unit school_id) where the aggregations built them:
    the decisions are the rule's on the figures (unit level and unit_id), and the rule's
    windows reuse the aggregations' shuffles (one for all pupils, one for the subgroups)."""
    # 40 schools of 1-40 pupils, in 4 sen values (X: one pupil each) and 2 genders.
    pupils = spark.createDataFrame(
        [(f"S{school:02d}", float(pupil), float(pupil), "X" if pupil == 0 else ("N", "N", "N", "K", "K", "E")[pupil % 6],
          ("F", "M", "M")[(pupil + school) % 3])
         for school in range(1, 41) for pupil in range(school)],
        f"school_id string, {value_column(MEASURE)} double, {value_column('cva')} double, sen string, gender string",
    )
    dimensions = {"sen": ("N", "K", "E", "X"), "gender": ("F", "M")}
    measures = (MEASURE, "cva")
    cells = aggregate.school_cells(pupils, measures, dimensions)
    marked = aggregate.marked_school_cells(pupils, measures, dimensions, None, ROLLUP.min_pupils)
    plan = marked._jdf.queryExecution().executedPlan().toString()  # noqa: SLF001
    assert plan.count("Exchange") == 2 and plan.count("Exchange hashpartitioning(school_id") == 2, plan
    key = ("unit_id", "measure", "subgroup", "subgroup_value")
    decision = ("suppression_reason", "suppressed")
    carried = {tuple(r[k] for k in key): (r.suppression_reason, r.suppressed)
               for r in aggregate.school_subgroup_sums(marked, carry=decision).collect()}
    on_figures = {tuple(r[k] for k in key): (r.suppression_reason, r.suppressed)
                  for r in suppression.withheld_reason(aggregate.school_subgroup_sums(cells), ROLLUP.min_pupils).collect()}
    assert carried == on_figures
    reasons = [reason for reason, _ in carried.values()]
    assert reasons.count("below_minimum_pupils") > 20 and reasons.count("secondary") > 20 and reasons.count(None) > 20
    all_pupils = [r for r in marked.collect() if r.subgroup == "all"]
    assert len(all_pupils) == 80
    assert all(r.suppression_reason == ("below_minimum_pupils" if r.n < ROLLUP.min_pupils else None) for r in all_pupils)


# school, pupils per value of a dimension listed B, A, C (not in name order) -> expected reasons
SECONDARY_TIES = [
    ("S1", {"B": 6, "A": 6, "C": 2}, {"B": None, "A": "secondary", "C": "below_minimum_pupils"}),  # tie: first by name
    ("S2", {"B": 7, "A": 6, "C": 3}, {"B": None, "A": "secondary", "C": "below_minimum_pupils"}),  # fewest pupils
    ("S3", {"B": 6, "A": 7, "C": 0}, {"B": None, "A": None}),  # nothing withheld; no cell without pupils
    ("S4", {"B": 3, "A": 4, "C": 10}, {"B": "below_minimum_pupils", "A": "below_minimum_pupils", "C": None}),  # 7 withheld
    ("S5", {"B": 2, "A": 6, "C": 6}, {"B": "below_minimum_pupils", "A": "secondary", "C": None}),
    ("S6", {"B": 1, "A": 2, "C": 0}, {"B": "below_minimum_pupils", "A": "below_minimum_pupils"}),  # none shown
]


def test_school_cells_secondary_suppression_takes_the_smallest_shown_value_then_the_first_by_name(spark):
    assert ROLLUP.min_pupils == 6
    pupils = spark.createDataFrame(
        [(school, 1.0, value) for school, counts, _ in SECONDARY_TIES for value, n in counts.items() for _ in range(n)],
        f"school_id string, {value_column(MEASURE)} double, d string",
    )
    dimensions = {"d": ("B", "A", "C")}
    marked = aggregate.marked_school_cells(pupils, (MEASURE,), dimensions, None, ROLLUP.min_pupils)
    got = {}
    for row in marked.where(F.col("subgroup") == "d").collect():
        got.setdefault(row.school_id, {})[row.subgroup_value] = row.suppression_reason
        assert row.suppressed == (row.suppression_reason is not None)
    assert got == {school: expected for school, _, expected in SECONDARY_TIES}
    on_figures = suppression.withheld_reason(aggregate.school_subgroup_sums(aggregate.school_cells(pupils, (MEASURE,), dimensions)),
                                             ROLLUP.min_pupils)
    assert {(r.unit_id, r.subgroup_value): r.suppression_reason for r in on_figures.collect()} == {
        (school, value): reason for school, reasons in got.items() for value, reason in reasons.items()
    }


def test_shown_withholds_figures_of_suppressed_rows_only(spark):
    frame = spark.createDataFrame(
        [("a", 5, 1.5, 0.7, True, None), ("b", 6, 2.5, 0.9, False, "withheld_in_an_earlier_year"), ("c", 7, 3.5, 1.1, False, None)],
        "unit_id string, n int, score double, last_year_score double, suppressed boolean, trend_suppression_reason string",
    )
    got = {r.unit_id: r for r in suppression.shown(frame, ("n", "score", "last_year_score")).collect()}
    assert (got["a"].n, got["a"].score, got["a"].last_year_score) == (None, None, None)
    assert (got["b"].n, got["b"].score, got["b"].last_year_score) == (6, 2.5, None)
    assert (got["c"].n, got["c"].score, got["c"].last_year_score) == (7, 3.5, 1.1)


def test_national_estimates_of_small_groups_are_withheld(spark):
    estimates = spark.createDataFrame(
        [("reading", 1, "computed", 5, 80.0, 3.0, 0.0, 1.0, -2.0), ("reading", 2, "computed", 6, 90.0, 3.0, 0.0, 1.0, -2.0)],
        "subject string, prior_attainment_group int, source string, n int, estimate double, outcome_sd double, "
        "progress_mean double, progress_sd double, cap double",
    )
    got = {r.prior_attainment_group: r for r in suppression.national_estimate_suppression(estimates, None, 6).collect()}
    assert got[1].suppressed and got[1].estimate is None and got[1].n is None and got[1].cap is None
    assert not got[2].suppressed and got[2].estimate == 90.0 and got[2].n == 6
    # Applied (published) estimates: the publisher's estimate stays; this run's caps follow the rule.
    applied = estimates.withColumn("n", F.lit(None).cast("int"))
    pupils = spark.createDataFrame([("reading", 1, 3), ("reading", 2, 40)], "subject string, prior_attainment_group int, pupils long")
    got = {r.prior_attainment_group: r for r in suppression.national_estimate_suppression(applied, pupils, 6).collect()}
    assert got[1].suppressed and got[1].estimate == 80.0 and got[1].cap is None and got[1].progress_sd is None
    assert not got[2].suppressed and got[2].cap == -2.0


# ----------------------------------------------------------------------------- identification


def _identification(spark, scenario: str):
    rows = [r for r in _rows("identification.csv") if r["scenario"] == scenario]
    measure = ROLLUP.identification.measure["ks2"]
    figures = spark.createDataFrame(
        [(r["school_id"], r["subgroup"], r["subgroup_value"], measure, int(r["n"]), float(r["score"]), False, None)
         for r in rows if r["n"]],
        "unit_id string, subgroup string, subgroup_value string, measure string, n int, score double, "
        "suppressed boolean, suppression_reason string",
    )
    last_year = None
    if any(r["identified_last_year"] for r in rows):
        last_year = spark.createDataFrame(
            [(r["school_id"], measure, r["subgroup"], r["subgroup_value"], True) for r in rows if r["identified_last_year"] == "true"],
            "school_id string, measure string, subgroup string, subgroup_value string, identified boolean",
        )
    ranked = identify.ranked_subgroups(figures, ROLLUP.identification, measure)
    table = identify.identified_schools(ranked, last_year, ROLLUP.identification, measure)
    return rows, {r.school_id: r for r in ranked.collect()}, {r.school_id: r for r in table.collect()}


@pytest.mark.parametrize("scenario", ["boundaries", "exit", "ties"])
def test_identification_at_the_10_and_20_percent_boundaries(spark, scenario):
    assert (ROLLUP.identification.lowest_percent, ROLLUP.identification.exit_above_percent) == (10, 20)
    assert ROLLUP.identification.min_pupils == 10
    rows, ranked, table = _identification(spark, scenario)
    for row in rows:
        school = row["school_id"]
        if row["expected_rank"]:
            assert ranked[school].rank == int(row["expected_rank"]), (scenario, school)
            assert ranked[school].percentile == pytest.approx(float(row["expected_percentile"]), abs=1e-12)
            assert ranked[school].eligible_subgroups == 20
        if row["expected_status"]:
            assert table[school].status == row["expected_status"], (scenario, school)
            assert table[school].identified == (row["expected_status"] != "exited")
        else:
            assert school not in table, (scenario, school)
    for row in rows:
        if row["school_id"] in table:
            # Without last year's table the flag is unknown (null); with it, true or false.
            expected = None if scenario != "exit" else row["identified_last_year"] == "true"
            assert table[row["school_id"]].identified_last_year is expected, (scenario, row["school_id"])


def test_identification_cut_offs(spark):
    _, _, table = _identification(spark, "boundaries")
    assert {r.lowest_cutoff_score for r in table.values()} == {-1.9}
    assert {r.exit_cutoff_score for r in table.values()} == {-1.7}


# ----------------------------------------------------------------------------- trends


def _year(spark, rows, year):
    present = [(r["case"], int(r[f"n_{year}"]), float(r[f"score_{year}"])) for r in rows if r[f"n_{year}"]]
    return spark.createDataFrame(present, "unit_id string, n int, score double").select(
        F.lit("school").alias("level"), "unit_id", F.lit("all").alias("subgroup"), F.lit("all").alias("subgroup_value"),
        F.lit(MEASURE).alias("measure"), "n", F.col("n").cast("double").alias("weighted_pupils"), "score",
    )


def test_trends_three_year_average_and_change(spark):
    rows = _rows("trends.csv")
    got = {
        r.unit_id: r
        for r in history.with_trends(_year(spark, rows, 2024), _year(spark, rows, 2023), _year(spark, rows, 2022), ROLLUP.min_pupils).collect()
    }
    for row in rows:
        found = got[row["case"]]
        assert found.last_year_score == _float(row["expected_last_year_score"]), row["case"]
        assert found.change_from_last_year == _float(row["expected_change_from_last_year"]), row["case"]
        if row["expected_three_year_average"]:
            assert found.three_year_average == pytest.approx(float(row["expected_three_year_average"]), abs=1e-12), row["working"]
        else:
            assert found.three_year_average is None, row["case"]


def _dimension_year(spark, values: dict[str, int]):
    """One school's disadvantaged yes/no figures with the given pupils (score 1.0 each)."""
    return spark.createDataFrame(
        [("school", "S1", "disadvantaged", value, MEASURE, n, float(n), 1.0) for value, n in values.items()],
        "level string, unit_id string, subgroup string, subgroup_value string, measure string, n int, "
        "weighted_pupils double, score double",
    )


def test_trends_withheld_when_an_earlier_figure_was_withheld_even_by_secondary_suppression(spark):
    # 2023: yes 5 (below the minimum) and no 25 (withheld too: it would give the 5 away).
    # 2024: yes 10, no 20, both shown; but a change from 2023 would give back what 2023 withheld.
    this_year = _dimension_year(spark, {"yes": 10, "no": 20})
    withheld = _dimension_year(spark, {"yes": 5, "no": 25})
    shown = _dimension_year(spark, {"yes": 6, "no": 24})
    for last_year, two_years_ago, expected in [
        (withheld, None, {"yes": "withheld_in_an_earlier_year", "no": "withheld_in_an_earlier_year"}),
        (shown, None, {"yes": None, "no": None}),
        (shown, withheld, {"yes": "withheld_in_an_earlier_year", "no": "withheld_in_an_earlier_year"}),  # in the 3-year average
    ]:
        trends = history.with_trends(this_year, last_year, two_years_ago, ROLLUP.min_pupils)
        got = {r.subgroup_value: r for r in suppression.with_suppression(trends, ROLLUP.min_pupils).collect()}
        assert {value: row.trend_suppression_reason for value, row in got.items()} == expected
        assert not any(row.suppressed for row in got.values())


def test_national_benchmark_is_null_where_the_national_figure_is_withheld(spark):
    sums = spark.createDataFrame(
        [("national", "national", "sen", "none", MEASURE, 100, 100.0, 50.0),
         ("national", "national", "sen", "support", MEASURE, 4, 4.0, 2.0),
         ("national", "national", "sen", "plan", MEASURE, 8, 8.0, 4.0),
         ("school", "S1", "sen", "none", MEASURE, 3, 3.0, 1.0)],
        "level string, unit_id string, subgroup string, subgroup_value string, measure string, n int, "
        "weighted_pupils double, weighted_sum double",
    )
    got = {r.subgroup_value: r.national_score for r in aggregate.national_scores(sums, ROLLUP.min_pupils).collect()}
    # support: 4 pupils; plan: 8 pupils, withheld with it (secondary); none: shown.
    assert got == {"none": 0.5, "support": None, "plan": None}


def test_trends_without_history_are_null(spark):
    rows = _rows("trends.csv")
    got = history.with_trends(_year(spark, rows, 2024), None, None, ROLLUP.min_pupils).collect()
    assert all(r.last_year_score is None and r.three_year_average is None and r.last_year_n is None for r in got)


def test_earlier_partition_is_read_only_when_present(spark, tmp_path):
    store = TableStore(spark, tmp_path)
    assert history.earlier_partition(store, UNSUPPRESSED_MEASURES, 2023, "ks2", "validated") is None  # no table yet
    data = [c for c in UNSUPPRESSED_MEASURES.spark_schema().fields if c.name not in ("academic_year", "key_stage", "data_stage")]
    row = ("school", "S1", "all", "all", MEASURE, 1, 30, 30.0, 0.5, 0.1, 0.9, "above", 0.0, None, None, None, None, None)
    frame = spark.createDataFrame([row], schema=T.StructType(data))
    store.replace_partition(frame, UNSUPPRESSED_MEASURES, 2023, "ks2", "validated")
    found = history.earlier_partition(store, UNSUPPRESSED_MEASURES, 2023, "ks2", "validated")
    assert found is not None and [r.score for r in found.collect()] == [0.5]
    assert history.earlier_partition(store, UNSUPPRESSED_MEASURES, 2023, "ks2", "unvalidated") is None
    assert history.earlier_partition(store, UNSUPPRESSED_MEASURES, 2022, "ks2", "validated") is None


# ----------------------------------------------------------------------------- comparisons


def test_similar_school_groups_band_cohort_size_and_disadvantage(spark):
    cohorts = {"P1": (30, 6), "P2": (14, 0), "P3": (90, 54), "P4": (45, 4)}  # included pupils, disadvantaged
    rows = [
        (school, f"{school}-{i}", True, "yes" if i < disadvantaged else "no")
        for school, (size, disadvantaged) in cohorts.items()
        for i in range(size)
    ]
    rows.append(("P2", "P2-excluded", False, "yes"))  # not included: not in the cohort
    pupils = spark.createDataFrame(rows, "school_id string, pupil_id string, included boolean, disadvantaged string")
    schools = spark.createDataFrame([(s, "primary", "mainstream") for s in cohorts], "school_id string, phase string, provision string")
    got = {r.school_id: r.similar_schools_group for r in compare.similar_school_groups(pupils, schools, "ks2", ROLLUP.similar_schools).collect()}
    assert got == {
        "P1": "primary|mainstream|size 30-45|disadvantaged 20-30%",
        "P2": "primary|mainstream|size 1-15|disadvantaged 0-10%",
        "P3": "primary|mainstream|size 90+|disadvantaged 60%+",
        "P4": "primary|mainstream|size 45-60|disadvantaged 0-10%",
    }


def test_quadrants_compare_with_the_national_figures(spark):
    rows = spark.createDataFrame(
        [("A", "progress_reading", 0.5, 0.0), ("A", "pct_expected_rwm", 60.0, 60.0),
         ("B", "progress_reading", -0.1, 0.0), ("B", "pct_expected_rwm", 70.0, 60.0),
         ("C", "progress_reading", 0.0, 0.0), ("C", "pct_expected_rwm", 59.9, 60.0)],
        "school_id string, measure string, score double, national_score double",
    ).withColumn("suppressed", F.lit(False))
    found = compare.with_quadrant(rows, {"progress_reading": "pct_expected_rwm"}).collect()
    got = {r.school_id: r.quadrant for r in found if r.measure == "progress_reading"}
    assert got == {"A": "high_attainment_high_progress", "B": "high_attainment_low_progress", "C": "low_attainment_high_progress"}
    assert {r.quadrant for r in found if r.measure == "pct_expected_rwm"} == {None}
    assert {r.quadrant_attainment_measure for r in found if r.measure == "progress_reading"} == {"pct_expected_rwm"}
    # A withheld attainment figure gives no quadrant.
    withheld = rows.withColumn("suppressed", (F.col("school_id") == "A") & (F.col("measure") == "pct_expected_rwm"))
    got = {r.school_id: r.quadrant for r in compare.with_quadrant(withheld, {"progress_reading": "pct_expected_rwm"}).collect() if r.measure == "progress_reading"}
    assert got["A"] is None and got["B"] == "high_attainment_low_progress"


def test_ranks_count_shown_figures_only(spark):
    rows = spark.createDataFrame(
        [("A", "T1", "G1", 0.5, False), ("B", "T1", "G2", 0.9, False), ("C", "T1", "G1", 0.9, False),
         ("D", "T1", "G1", 2.0, True), ("E", None, "G1", 1.0, False), ("F", "T2", None, None, False)],
        "school_id string, trust_id string, similar string, score double, suppressed boolean",
    ).withColumn("measure", F.lit(MEASURE))
    ranked = compare.with_ranks(rows, [("trust_id", "rank_in_trust", "schools_ranked_in_trust"), ("similar", "similar_rank", "similar_count")])
    got = {r.school_id: (r.rank_in_trust, r.schools_ranked_in_trust, r.similar_rank, r.similar_count) for r in ranked.collect()}
    assert got == {
        "A": (3, 3, 3, 3), "B": (1, 3, 1, 1), "C": (1, 3, 2, 3),
        "D": (None, None, None, None), "E": (None, None, 1, 3), "F": (None, None, None, None),
    }
    assert ranked.columns == [*rows.columns, "rank_in_trust", "schools_ranked_in_trust", "similar_rank", "similar_count"]
