"""The release report's figures (valueadded.report.summaries), on small inline frames: no Spark, no files."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from support.cva_model import cva_model_rows
from valueadded.report.html import format_value
from valueadded.report.summaries import (
    band_counts,
    cva_models,
    funnel_points,
    progress_distribution,
    quadrant_points,
    reconciliation,
    trust_comparison,
)

Z, SD = 1.96, 6.0


def _school(school_id, measure, n, score, **extra):
    half = Z * SD / math.sqrt(n)
    lower, upper = score - half, score + half
    band = "above" if lower > 0 else "below" if upper < 0 else "average"
    return {"school_id": school_id, "measure": measure, "n": float(n), "score": score, "lower": lower, "upper": upper,
            "band": band, "national_score": 0.01, "trust_id": None, "in_trust_figure": False, "quadrant": None,
            "quadrant_attainment_measure": None, **extra}


def test_funnel_limits_are_the_schools_own_intervals():
    schools = pd.DataFrame([
        _school("A", "progress_maths", 10, 4.0),   # half-width 3.72: above
        _school("B", "progress_maths", 10, 3.0),   # inside
        _school("C", "progress_maths", 100, -1.5),  # half-width 1.18: below
        _school("D", "progress_maths", 100, 1.0),  # inside
        _school("E", "progress_reading", 10, 9.0),  # another measure
    ])
    points, constant = funnel_points(schools, "progress_maths")
    assert constant == pytest.approx(Z * SD)
    assert dict(zip(points.school_id, points.outside)) == {"A": "above", "B": "inside", "C": "below", "D": "inside"}
    # Outside the funnel exactly when the school is banded above or below average.
    assert ((points.outside != "inside") == (points.band != "average")).all()


def test_funnel_of_a_measure_without_schools_is_empty():
    points, constant = funnel_points(pd.DataFrame([_school("A", "progress_maths", 10, 1.0)]), "progress_8")
    assert points.empty and math.isnan(constant)


def test_quadrant_points_pair_progress_with_the_schools_attainment_figure():
    schools = pd.DataFrame([
        _school("A", "progress_maths", 30, 2.0, quadrant="high_attainment_high_progress", quadrant_attainment_measure="pct_expected_rwm"),
        _school("B", "progress_maths", 30, -2.0, quadrant="low_attainment_low_progress", quadrant_attainment_measure="pct_expected_rwm"),
        {**_school("A", "pct_expected_rwm", 30, 80.0), "national_score": 61.0},
        {**_school("B", "pct_expected_rwm", 30, 40.0), "national_score": 61.0},
    ])
    points, attainment_measure, attainment_line, progress_line = quadrant_points(schools, "progress_maths")
    assert attainment_measure == "pct_expected_rwm"
    assert (attainment_line, progress_line) == (61.0, 0.01)
    assert points.set_index("school_id")[["attainment", "progress"]].to_dict("index") == {
        "A": {"attainment": 80.0, "progress": 2.0}, "B": {"attainment": 40.0, "progress": -2.0}}


def test_trusts_are_ranked_and_only_their_counted_schools_kept():
    trusts = pd.DataFrame({
        "trust_id": ["T1", "T2"], "trust_name": ["One", "Two"], "measure": "progress_8", "n": [300, 200],
        "score": [0.4, -0.2], "lower": [0.3, -0.3], "upper": [0.5, -0.1], "band": ["above", "below"], "schools_counted": [3, 3],
    })
    schools = pd.DataFrame([
        _school("A", "progress_8", 100, 0.5, trust_id="T1", in_trust_figure=True),
        _school("B", "progress_8", 100, 0.1, trust_id="T1", in_trust_figure=False),  # joined too recently
        _school("C", "progress_8", 100, -0.3, trust_id="T2", in_trust_figure=True),
    ])
    ranked, members = trust_comparison(trusts, schools, "progress_8")
    assert list(zip(ranked.trust_id, ranked["rank"])) == [("T2", 1), ("T1", 2)]
    assert sorted(zip(members.school_id, members["rank"])) == [("A", 2), ("C", 1)]


def test_band_counts_per_measure_in_the_order_asked():
    schools = pd.DataFrame([_school("A", "progress_maths", 10, 4.0), _school("B", "progress_maths", 10, 0.0),
                            _school("C", "progress_reading", 10, -4.0)])
    table = band_counts(schools, ("progress_reading", "progress_maths"))
    assert table.measure.tolist() == ["progress_reading", "progress_maths"]
    assert table.set_index("measure").fillna(0).astype(int).to_dict("index") == {
        "progress_reading": {"below": 1, "average": 0, "above": 0}, "progress_maths": {"below": 0, "average": 1, "above": 1}}


def test_progress_distribution_counts_every_scored_pupil_once():
    progress = pa.table({
        "subject": ["maths", "maths", "maths", "reading", "reading"],
        "adjusted_progress": [1.0, -3.0, None, 2.0, 4.0],  # a pupil without a score is not counted
        "capped": [False, True, False, False, False],
    })
    out = progress_distribution(progress)
    assert set(out) == {"maths", "reading"}
    maths = out["maths"]
    assert (maths.n, maths.mean, maths.capped, int(maths.counts.sum())) == (2, -1.0, 1, 2)
    assert maths.sd == pytest.approx(np.std([1.0, -3.0], ddof=1))
    assert (maths.edges[0], maths.edges[-1]) == (-3.0, 1.0)


def test_cva_models_give_intervals_and_the_school_share_of_variance():
    not_fitted = {**cva_model_rows("special", ["x"], [0.0], [0.0]).iloc[0].to_dict(), "status": "not_fitted",
                  "term": None, "estimate": None, "std_error": None, "message": "TooFewGroupsError: 3 schools"}
    rows = pd.DataFrame.from_records([*cva_model_rows("main", ["intercept", "prior_aps"], [10.0, 2.0], [1.0, 0.5]).to_dict("records"), not_fitted])
    main, special = cva_models(rows)
    assert main["icc"] == pytest.approx(0.1)
    coefficients = main["coefficients"].set_index("term")
    assert coefficients.loc["prior_aps", ["lower", "upper"]].tolist() == pytest.approx([2.0 - 0.98, 2.0 + 0.98])
    assert special["status"] == "not_fitted" and "coefficients" not in special and "3 schools" in special["message"]


def test_reconciliation_tables_come_from_the_run_log():
    counts = {
        "inputs": {"pupils": {"rows_in": 10, "rows_in_scope": 8, "rows_rejected": 1}},
        "pupil_results": {"by_reason": {"included": 6, "absent": 1}},
        "reconciliation": {"pupils": {"rows_in": 8, "included_excluded_rejected": 8, "holds": True}},
        "cva": {"models": {"main": {"pupils": 5, "status": "fitted"}}, "not_in_a_model": {"no_outcome": 1}},
    }
    tables = reconciliation(counts)
    assert tables["inputs"].set_index("table").loc["pupils", "rows_rejected"] == 1
    assert tables["pupils"].values.tolist() == [["absent", 1], ["included", 6]]
    assert tables["checks"].holds.tolist() == [True]
    assert tables["cva"]["count"].tolist() == [5, 1]


@pytest.mark.parametrize("value, digits, shown", [
    (None, None, "-"), (float("nan"), 2, "-"), (True, None, "yes"), (1234567, None, "1,234,567"),
    (np.int32(42), None, "42"), (12.0, None, "12"), (0.123456, None, "0.1235"), (2.5, 3, "2.500"), ("text", None, "text"),
])
def test_format_value(value, digits, shown):
    assert format_value(value, digits) == shown
