"""KS2 methodology rules as scenario tables a statistician can read (tests/scenarios/ks2/)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from valueadded.measures import estimates
from valueadded.measures.inclusion import subject_test_outcome, writing_outcome
from valueadded.measures.ks2 import attainment_rows, load_tables
from valueadded.measures.prior_attainment import ks1_start_point, prior_attainment_group

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios" / "ks2"
TABLES = load_tables(2024)


def _rows(name: str) -> list[dict[str, str]]:
    with (SCENARIOS / name).open() as handle:
        return list(csv.DictReader(handle))


def _none(value: str) -> str | None:
    return value if value != "" else None


def test_ks1_conversions_and_average_point_score(spark):
    rows = _rows("ks1_start_point.csv")
    frame = spark.createDataFrame(
        [(r["case"], _none(r["ks1_reading"]), _none(r["ks1_writing"]), _none(r["ks1_maths"])) for r in rows],
        "case string, ks1_reading string, ks1_writing string, ks1_maths string",
    )
    aps, reason = ks1_start_point(TABLES.ks1_points, TABLES.ks1_no_result)
    got = {r.case: (r.aps, r.reason) for r in frame.select("case", aps.alias("aps"), reason.alias("reason")).collect()}
    for r in rows:
        expected_aps = float(r["expected_aps"]) if r["expected_aps"] else None
        assert got[r["case"]] == (expected_aps, _none(r["expected_reason"])), r["case"]


def test_prior_attainment_group_boundaries(spark):
    rows = _rows("groups.csv")
    frame = spark.createDataFrame([(r["case"], float(r["aps"])) for r in rows], "case string, aps double")
    group = prior_attainment_group(F.col("aps"), TABLES.group_lower_bounds)
    got = {r.case: r.group for r in frame.select("case", group.alias("group")).collect()}
    assert got == {r["case"]: int(r["expected_group"]) for r in rows}


def test_nominal_scores_and_subject_exclusions(spark):
    rows = _rows("outcomes.csv")
    schema = (
        "case string, subject string, reading_test_code string, reading_scaled_score int, reading_ta string, reading_pscale string, "
        "maths_test_code string, maths_scaled_score int, maths_ta string, maths_pscale string, writing_ta string, writing_pscale string"
    )
    data = []
    for r in rows:
        values = {f"{s}_{c}": None for s in ("reading", "maths") for c in ("test_code", "scaled_score", "ta", "pscale")}
        values.update(writing_ta=None, writing_pscale=None)
        if r["subject"] == "writing":
            values.update(writing_ta=_none(r["ta"]), writing_pscale=_none(r["pscale"]))
        else:
            s = r["subject"]
            values.update({f"{s}_test_code": r["test_code"], f"{s}_scaled_score": int(r["scaled_score"]) if r["scaled_score"] else None,
                           f"{s}_ta": _none(r["ta"]), f"{s}_pscale": _none(r["pscale"])})
        data.append((r["case"], r["subject"], *[values[name.split()[0]] for name in schema.split(", ")[2:]]))
    frame = spark.createDataFrame(data, schema)
    columns = {}
    for subject in ("reading", "maths"):
        columns[subject] = subject_test_outcome(subject, TABLES.nominal, TABLES.excluded_test_codes)
    columns["writing"] = writing_outcome(TABLES.writing_points, TABLES.nominal, TABLES.excluded_writing_ta)
    outcome = F.lit(None).cast("double")
    reason = F.lit(None).cast("string")
    for subject, (subject_outcome, subject_reason) in columns.items():
        outcome = F.when(F.col("subject") == subject, subject_outcome).otherwise(outcome)
        reason = F.when(F.col("subject") == subject, subject_reason).otherwise(reason)
    got = {r.case: (r.outcome, r.reason) for r in frame.select("case", outcome.alias("outcome"), reason.alias("reason")).collect()}
    for r in rows:
        expected = float(r["expected_outcome"]) if r["expected_outcome"] else None
        assert got[r["case"]] == (expected, _none(r["expected_reason"])), r["case"]


# A worked example: one subject, two groups of ten pupils, 10% capped (K = round(0.1 x 20) = 2).
# Group 1 outcomes average 100, group 2 average 110, so progress = outcome - 100 or - 110.
# SD of progress: group 1 sqrt(242/9) = 5.18545, group 2 sqrt(362/9) = 6.34210.
# The two lowest z are -10/5.18545 = -1.92848 (group 1) and -10/6.34210 = -1.57676 (group 2),
# so z* = -1.57676; only the group 1 pupil with z < z* is capped, to 0 + z* x 5.18545 = -8.17623.
GROUP_1 = [90, 96, 98, 99, 100, 100, 101, 102, 104, 110]
GROUP_2 = [100, 105, 106, 108, 110, 110, 111, 112, 114, 124]
WORKED_RULES = estimates.ProgressRules(estimate_method="mean", extreme_share=0.1, divisors={}, well_thresholds={"reading": 3.0})


def _worked_long(spark):
    rows = [(f"g1p{i}", "A" if i < 5 else "B", "reading", 1, float(v), True, True) for i, v in enumerate(GROUP_1)]
    rows += [(f"g2p{i}", "A" if i < 5 else "B", "reading", 2, float(v), True, True) for i, v in enumerate(GROUP_2)]
    return spark.createDataFrame(
        rows, "pupil_id string, school_id string, subject string, prior_attainment_group int, outcome double, in_progress boolean, in_national boolean"
    )


def test_estimate_progress_and_cap_worked_by_hand(spark):
    result = estimates.progress_measures(_worked_long(spark), WORKED_RULES)
    by_group = {r.prior_attainment_group: r for r in result["estimates"].collect()}
    assert (by_group[1].n, by_group[1].estimate, by_group[2].estimate) == (10, 100.0, 110.0)
    assert by_group[1].progress_sd == pytest.approx(math.sqrt(242 / 9), abs=1e-9)
    assert result["z_star"]["reading"] == pytest.approx(-10 / math.sqrt(362 / 9), abs=1e-9)
    assert by_group[1].cap == pytest.approx(-8.17623, abs=1e-5)
    pupils = {r.pupil_id: r for r in result["pupils"].collect()}
    assert pupils["g1p0"].progress == -10.0 and pupils["g1p0"].capped and pupils["g1p0"].adjusted_progress == pytest.approx(-8.17623, abs=1e-5)
    assert pupils["g2p0"].progress == -10.0 and not pupils["g2p0"].capped and pupils["g2p0"].adjusted_progress == -10.0
    assert sum(p.capped for p in pupils.values()) == 1
    assert pupils["g2p9"].progress == 14.0
    # School A: adjusted progress of its ten pupils averages (-8.17623 - 7 - 21) / 10.
    schools = {r.school_id: r for r in result["schools"].collect()}
    assert schools["A"].n == 10 and schools["A"].score == pytest.approx(-3.617623, abs=1e-6)


def test_a_group_with_no_state_funded_mainstream_pupil_has_no_estimate_and_its_pupils_say_so(spark):
    # Group 1: mainstream pupils (outcomes 100, 102); group 2: one special-school pupil,
    # who has a start point and an outcome but no estimate to be measured against.
    long = spark.createDataFrame(
        [("m1", "A", "reading", 1, 100.0, True, True, None), ("m2", "A", "reading", 1, 102.0, True, True, None),
         ("s1", "S", "reading", 2, 95.0, True, False, None), ("x1", "S", "reading", 2, None, False, False, "test_code_A")],
        "pupil_id string, school_id string, subject string, prior_attainment_group int, outcome double, "
        "in_progress boolean, in_national boolean, exclusion_reason string",
    )
    result = estimates.progress_measures(long, WORKED_RULES)
    assert [r.prior_attainment_group for r in result["estimates"].collect()] == [1]
    pupils = {r.pupil_id: r for r in estimates.without_estimate_is_excluded(result["pupils"]).collect()}
    assert (pupils["s1"].in_progress, pupils["s1"].progress, pupils["s1"].exclusion_reason) == (False, None, "no_national_estimate")
    assert (pupils["x1"].in_progress, pupils["x1"].exclusion_reason) == (False, "test_code_A")  # the first reason stays
    assert (pupils["m1"].in_progress, pupils["m1"].progress, pupils["m1"].exclusion_reason) == (True, -1.0, None)
    assert {r.school_id for r in result["schools"].collect()} == {"A"}


def test_median_line_option(spark):
    median_rules = estimates.ProgressRules(estimate_method="median", extreme_share=0.0, divisors={}, well_thresholds={})
    result = estimates.progress_measures(_worked_long(spark), median_rules)
    by_group = {r.prior_attainment_group: r.estimate for r in result["estimates"].collect()}
    assert by_group == {1: 100.0, 2: 110.0}  # medians of the ten outcomes
    assert result["z_star"] == {}


# School intervals and bands: national SD 5, threshold 3, z = 1.96.
# half-width = 1.96 x 5 / sqrt(n).
BAND_CASES = [
    ("S1", 25, 2.0, 0.04, 3.96, "above"),
    ("S2", 100, 3.5, 2.52, 4.48, "well_above"),
    ("S3", 4, -4.0, -8.9, 0.9, "average"),
    ("S4", 25, -3.0, -4.96, -1.04, "well_below"),
    ("S5", 25, -2.5, -4.46, -0.54, "below"),
    ("S6", 16, 3.0, 0.55, 5.45, "well_above"),
]


def test_school_interval_and_band_worked_by_hand(spark):
    rows = [(school, "reading", score) for school, n, score, *_ in BAND_CASES for _ in range(n)]
    adjusted = spark.createDataFrame(rows, "school_id string, subject string, adjusted_progress double")
    national_sd = spark.createDataFrame([("reading", 5.0)], "subject string, national_sd double")
    got = {r.school_id: r for r in estimates.school_scores(adjusted, national_sd, WORKED_RULES).collect()}
    for school, n, score, lower, upper, band in BAND_CASES:
        row = got[school]
        assert (row.n, row.band) == (n, band), school
        assert (row.score, row.lower, row.upper) == pytest.approx((score, lower, upper), abs=1e-9), school


def test_group_with_identical_progress_is_never_capped(spark):
    # Group 3's two pupils share one outcome: SD 0, so no z and no cap, and no error.
    same = spark.createDataFrame(
        [("g3p0", "C", "reading", 3, 95.0, True, True), ("g3p1", "C", "reading", 3, 95.0, True, True)],
        "pupil_id string, school_id string, subject string, prior_attainment_group int, outcome double, in_progress boolean, in_national boolean",
    )
    result = estimates.progress_measures(_worked_long(spark).unionByName(same), WORKED_RULES)
    pupils = {r.pupil_id: r for r in result["pupils"].collect()}
    assert not pupils["g3p0"].capped and pupils["g3p0"].adjusted_progress == 0.0
    assert sum(p.capped for p in pupils.values()) == 1


def test_pupils_tied_with_the_z_star_pupil_are_not_capped_whatever_the_partitioning(spark):
    # Group 2 gets a second pupil with outcome 100: two pupils share the group's lowest z.
    # K = round(0.1 x 21) = 2: z* is that shared z, so both are at the cap already and
    # neither is capped; only group 1's -10 (z below z*) is. Ties must not be decided by
    # the last bit of the cap, which moves with the order Spark sums the group in.
    tied = spark.createDataFrame(
        [("g2p10", "B", "reading", 2, 100.0, True, True)],
        "pupil_id string, school_id string, subject string, prior_attainment_group int, outcome double, in_progress boolean, in_national boolean",
    )
    long = _worked_long(spark).unionByName(tied)
    for frame in (long.repartition(1), long.repartition(7), long.orderBy(F.rand(seed=5)).repartition(3)):
        result = estimates.progress_measures(frame, WORKED_RULES)
        pupils = {r.pupil_id: r for r in result["pupils"].collect()}
        assert {p for p, r in pupils.items() if r.capped} == {"g1p0"}
        for tied_pupil in ("g2p0", "g2p10"):
            assert pupils[tied_pupil].adjusted_progress == pupils[tied_pupil].progress


def test_attainment_measures_worked_by_hand(spark):
    """attainment.csv's pupils give attainment_expected.csv's school rows, and nothing else:
    S2 has no average scaled score rows (no pupil with a scaled score)."""
    rows = _rows("attainment.csv")
    pupils = spark.createDataFrame(
        [
            (r["school_id"], r["included"] == "true", _score(r["reading_scaled_score"]), _score(r["maths_scaled_score"]), r["writing_ta"])
            for r in rows
        ],
        "school_id string, included boolean, reading_scaled_score int, maths_scaled_score int, writing_ta string",
    )
    result = attainment_rows(pupils, TABLES)
    got = {(r.school_id, r.measure): (r.n, r.score, r.lower, r.upper, r.band) for r in result.collect()}
    expected = {
        (r["school_id"], r["measure"]): (int(r["n"]), pytest.approx(float(r["score"])), None, None, None)
        for r in _rows("attainment_expected.csv")
    }
    assert got == expected


def test_attainment_measures_aggregate_the_pupils_once(spark):
    """All ten measures come from one aggregation of the pupils: a union of one aggregation
    per measure read the national pupils ten times (1.6-2.3 s against 0.3 s)."""
    pupils = spark.createDataFrame(
        [("S1", True, 100, 100, "EXS")],
        "school_id string, included boolean, reading_scaled_score int, maths_scaled_score int, writing_ta string",
    )
    plan = attainment_rows(pupils, TABLES)._jdf.queryExecution().optimizedPlan().toString()  # noqa: SLF001
    assert plan.count("Aggregate [") == 1, plan


def _score(value: str) -> int | None:
    return int(value) if value else None


def test_every_user_of_a_ks2_test_score_scores_each_outcome_alike(spark):
    """KS2 progress, KS4 prior attainment and the CVA models (a KS2 outcome, a KS4 prior)
    give each reading and maths row of outcomes.csv the same score: the scenario's. (For
    KS4 prior attainment the row is both subjects, whose mean is then the score itself.)"""
    from valueadded.cva import design
    from valueadded.cva.spec import load_model_spec
    from valueadded.measures.ks4_prior_attainment import ks2_prior_attainment
    from valueadded.measures.ks4_tables import load_ks4_tables

    rows = [r for r in _rows("outcomes.csv") if r["subject"] in ("reading", "maths")]
    columns = ("test_code", "scaled_score", "ta", "pscale")
    frame = spark.createDataFrame(
        [(r["case"], r["test_code"], int(r["scaled_score"]) if r["scaled_score"] else None, _none(r["ta"]), _none(r["pscale"])) for r in rows],
        "case string, " + ", ".join(f"{c} {'int' if c == 'scaled_score' else 'string'}" for c in columns),
    ).select("case", *(F.col(c).alias(f"{prefix}_{c}") for prefix in ("reading", "ks2_reading", "ks2_maths") for c in columns))
    scores = {
        "ks4 prior attainment": ks2_prior_attainment(load_ks4_tables(2024)),
        "ks4 CVA prior": design.ks2_test_score("ks2_", "reading", load_model_spec("ks4_mainstream.yaml").prior.nominal_scores),
        "ks2 CVA outcome": design.ks2_test_score("", "reading", load_model_spec("ks2_mainstream.yaml").outcome.nominal_scores),
    }
    got = frame.select("case", *(score.alias(name) for name, score in scores.items())).collect()
    assert len(got) == len(rows)
    for row in got:
        expected = next(float(r["expected_outcome"]) if r["expected_outcome"] else None for r in rows if r["case"] == row.case)
        assert {name: row[name] for name in scores} == dict.fromkeys(scores, expected), row.case
