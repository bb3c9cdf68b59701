"""Four-stage CVA predictions and shrunken school scores (valueadded.cva.apply).

The pandas functions are tested on their own; the Spark wrappers must give the same numbers.
The Ready Reckoner lines of seed 004 are reproduced from the published 2006 KS2-4
coefficients (SPEC 2.3) through the design and decomposition code.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from pyspark.sql import functions as F

from valueadded.cva import fit_random_intercept
from valueadded.cva.apply import COMPONENT_COLUMNS, RESIDUAL, predict, shrunken_school_scores, stage_components, term_contributions
from valueadded.cva.design import OUTCOME, design_column, with_design, with_prior_and_outcome
from valueadded.cva.spec import load_model_spec

# The published 2006 KS2-4 CVA model (SPEC 2.3): outcome capped best-8 points.
COEFFICIENTS_2006 = {
    "intercept": 132.315,
    "prior_aps": -5.523,
    "prior_aps_sq": 0.3876,
    "prior_english_minus_aps": 2.330,
    "prior_maths_minus_aps": 0.376,
    "fsm": -25.122,
    "idaci": -65.191,
    "ever_in_care": -31.236,
}
MODEL_2006 = {
    "name": "ks4_cva_2006",
    "description": "The parts of the published 2006 KS2-4 model quoted in SPEC 2.3.",
    "key_stage": "ks4",
    "population": "mainstream",
    "when_not_estimable": "stop",
    "outcome": {"measure": "column", "column": "capped_best8", "valid_range": [0, 464], "school_score_centre": 1000},
    "prior_attainment": {
        "measure": "subject_points",
        "columns": {"english": "ks2_english_points", "maths": "ks2_maths_points", "science": "ks2_science_points"},
        "square": True,
        "subject_differences": ["english", "maths"],
    },
    "categorical": [],
    "pupil_terms": ["fsm", "idaci", "ever_in_care"],
    "interactions": [],
    "school_terms": [],
}


@pytest.fixture(scope="module")
def spec_2006(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "ks4_cva_2006.yaml"
    path.write_text(yaml.safe_dump(MODEL_2006))
    return load_model_spec(path)


def test_ready_reckoner_lines_from_the_2006_coefficients(spark, spec_2006):
    # Seed 004's Ready Reckoner example: English 27.6, maths 30.3, science 30.78 (fine grades).
    pupil = spark.createDataFrame(
        [("P1", "S1", 27.6, 30.3, 30.78, 350.0, False, 0.14, False)],
        "pupil_id string, school_id string, ks2_english_points double, ks2_maths_points double, "
        "ks2_science_points double, capped_best8 double, fsm boolean, idaci double, ever_in_care boolean",
    )
    design = with_design(with_prior_and_outcome(pupil, spec_2006), spec_2006)
    terms = [t for t in spec_2006.term_names if t != "intercept"]
    row = design.select(*[design_column(t) for t in terms]).toPandas()
    row.columns = terms
    assert row.prior_aps[0] == pytest.approx(29.56, abs=1e-12)
    assert row.prior_english_minus_aps[0] == pytest.approx(-1.96, abs=1e-12)
    assert row.prior_maths_minus_aps[0] == pytest.approx(0.74, abs=1e-12)

    lines = term_contributions(row, COEFFICIENTS_2006).iloc[0]
    assert round(lines["prior_english_minus_aps"], 2) == -4.57  # -1.96 x 2.330
    assert round(lines["prior_maths_minus_aps"], 2) == 0.28  # +0.74 x 0.376
    assert lines["idaci"] == pytest.approx(0.14 * -65.191)

    stages = stage_components(row, COEFFICIENTS_2006, spec_2006.stage_of, spec_2006.outcome.valid_range).iloc[0]
    stage_1 = 132.315 - 5.523 * 29.56 + 0.3876 * 29.56**2 + 2.330 * -1.96 + 0.376 * 0.74
    assert stages["prior_attainment"] == pytest.approx(stage_1, rel=1e-12)
    assert stages["characteristics"] == pytest.approx(0.14 * -65.191, rel=1e-12)
    assert stages["school_level"] == 0.0 and stages["range_adjustment"] == 0.0
    assert stages["prediction"] == pytest.approx(lines.sum(), rel=1e-12)

    # The same through the Spark pandas UDF.
    predicted = predict(design, COEFFICIENTS_2006, spec_2006.stage_of, spec_2006.outcome.valid_range).toPandas().iloc[0]
    for part, column in COMPONENT_COLUMNS.items():
        assert predicted[column] == pytest.approx(stages[part], rel=1e-12)
    assert predicted[RESIDUAL] == pytest.approx(350.0 - stages["prediction"], rel=1e-12)


# Categoricals with several codes per level, interactions with a categorical on either side.
MODEL_CATEGORICAL = {
    **MODEL_2006,
    "name": "categorical_blocks",
    "categorical": [
        {"name": "sen", "column": "sen", "reference": ["N"], "levels": {"sen_support": ["K"], "sen_plan": ["E"]}},
        {"name": "ethnicity", "column": "ethnicity", "reference": ["WBRI"], "levels": {
            "white_other": ["WIRI", "WIRT", "WOTH", "WROM"], "mixed": ["MWBC", "MWBA", "MWAS", "MOTH"],
            "asian": ["AIND", "APKN", "ABAN", "AOTH", "CHNE"], "black": ["BCRB", "BAFR", "BOTH"], "other": ["OOTH", "UNCL"]}},
    ],
    "interactions": [["fsm", "ethnicity"], ["sen", "idaci"], ["fsm", "idaci"]],
}
ETHNICITIES = ["WBRI", "WIRI", "WIRT", "WOTH", "WROM", "MWBC", "MWBA", "MWAS", "MOTH", "AIND", "APKN", "ABAN", "AOTH",
               "CHNE", "BCRB", "BAFR", "BOTH", "OOTH", "UNCL"]


def test_categorical_terms_as_lookups_give_the_same_predictions(spark, tmp_path):
    """predict() with the spec looks each categorical's coefficient up by code; the numbers
    are those of one product per indicator term, to the last bit, a dropped term included."""
    path = tmp_path / "categorical_blocks.yaml"
    path.write_text(yaml.safe_dump(MODEL_CATEGORICAL))
    spec = load_model_spec(path)
    rng = np.random.default_rng(11)
    rows = [
        (f"P{k}", "S1", float(rng.uniform(5, 40)), float(rng.uniform(5, 40)), float(rng.uniform(5, 40)),
         float(rng.uniform(100, 500)), bool(k % 2), float(rng.uniform(0, 1)), bool(k % 3 == 0), sen, ethnicity)
        for k, (sen, ethnicity) in enumerate((s, e) for s in ("N", "K", "E") for e in ETHNICITIES)
    ]
    pupils = spark.createDataFrame(rows, "pupil_id string, school_id string, ks2_english_points double, "
                                   "ks2_maths_points double, ks2_science_points double, capped_best8 double, fsm boolean, "
                                   "idaci double, ever_in_care boolean, sen string, ethnicity string")
    design = with_design(with_prior_and_outcome(pupils, spec), spec)
    coefficients = {term: float(rng.normal(0, 10)) for term in spec.term_names}
    for dropped in ("mixed", "fsm_x_black", "sen_plan_x_idaci"):  # as cva_empty_terms: drop leaves them out
        coefficients.pop(dropped)
    assert {"fsm_x_white_other", "sen_support_x_idaci", "fsm_x_idaci"} <= set(coefficients)

    def predicted(**spec_argument):
        frame = predict(design, coefficients, spec.stage_of, (-1e9, 1e9), **spec_argument)
        return frame.select("pupil_id", *COMPONENT_COLUMNS.values(), RESIDUAL).toPandas().set_index("pupil_id").sort_index()

    by_term, by_lookup = predicted(), predicted(spec=spec)
    assert len(by_term) == 3 * 19 and by_term.notna().all().all()
    np.testing.assert_array_equal(by_lookup.to_numpy(), by_term.to_numpy())


STAGE_OF = {"intercept": "prior_attainment", "aps": "prior_attainment", "fsm": "characteristics", "school_mean": "school_level"}
COEFS = {"intercept": 10.0, "aps": 0.5, "fsm": -4.0, "school_mean": 0.25}


def test_stage_components_split_and_range_adjustment():
    design = pd.DataFrame({"aps": [20.0, 100.0, -40.0, 30.0], "fsm": [0.0, 1.0, 1.0, 1.0], "school_mean": [40.0, 40.0, 0.0, 8.0]})
    out = stage_components(design, COEFS, STAGE_OF, (0.0, 50.0))
    np.testing.assert_allclose(out.prior_attainment, 10.0 + 0.5 * design.aps)
    np.testing.assert_allclose(out.characteristics, -4.0 * design.fsm)
    np.testing.assert_allclose(out.school_level, 0.25 * design.school_mean)
    raw = out.prior_attainment + out.characteristics + out.school_level  # 30, 66, -14, 23
    np.testing.assert_allclose(raw, [30.0, 66.0, -14.0, 23.0])
    np.testing.assert_allclose(out.range_adjustment, [0.0, 50.0 - 66.0, 0.0 + 14.0, 0.0])
    np.testing.assert_allclose(out.prediction, [30.0, 50.0, 0.0, 23.0])
    np.testing.assert_allclose(out.prediction, raw + out.range_adjustment)
    assert list(out.index) == list(design.index)
    with pytest.raises(ValueError, match="unknown stage"):
        stage_components(design, COEFS, {**STAGE_OF, "fsm": "context"}, (0.0, 50.0))
    with pytest.raises(KeyError, match="school_mean"):
        term_contributions(design.drop(columns="school_mean"), COEFS)


def _school_data(seed=3, n_schools=40):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 40, n_schools)
    school = np.repeat([f"S{k:03d}" for k in range(n_schools)], sizes)
    u = np.repeat(rng.normal(0, 1.5, n_schools), sizes)
    aps = rng.normal(30, 4, school.size)
    fsm = (rng.random(school.size) < 0.3).astype(float)
    y = 5 + 0.8 * aps - 2 * fsm + u + rng.normal(0, 3, school.size)
    return pd.DataFrame({"pupil_id": [f"P{k}" for k in range(school.size)], "school_id": school,
                         design_column("aps"): aps, design_column("fsm"): fsm, OUTCOME: y})


def test_school_scores_are_the_blups_without_range_adjustment_and_pupil_means_with_it(spark):
    data = _school_data()
    frame = spark.createDataFrame(data)
    fit = fit_random_intercept(frame, OUTCOME, [design_column("aps"), design_column("fsm")], "school_id",
                               names=["aps", "fsm"])
    coefficients = fit.coefficients.estimate.to_dict()
    stage_of = {"intercept": "prior_attainment", "aps": "prior_attainment", "fsm": "characteristics"}
    wide = predict(frame, coefficients, stage_of, (-1e9, 1e9))
    scores = shrunken_school_scores(wide, fit.sigma2_school, fit.sigma2_pupil, centre=100.0).toPandas().set_index("school_id")
    blup = fit.group_effects.set_index("group").loc[scores.index]
    np.testing.assert_allclose(scores.score - 100.0, blup.effect, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(scores.lower - 100.0, blup.lower, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(scores.upper - 100.0, blup.upper, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(scores.n, blup.n)
    small, large = scores.n.idxmin(), scores.n.idxmax()
    assert scores.shrinkage[small] < scores.shrinkage[large]  # small schools shrink more ...
    assert (scores.upper - scores.lower)[small] > (scores.upper - scores.lower)[large]  # ... and are less certain

    # A narrow valid range clips predictions: the school score is k x the mean pupil CVA after clipping.
    narrow = predict(frame, coefficients, stage_of, (25.0, 30.0)).toPandas()
    assert (narrow.cva_range_adjustment != 0).any()
    np.testing.assert_allclose(narrow.cva_prediction.clip(25.0, 30.0), narrow.cva_prediction)
    clipped = shrunken_school_scores(spark.createDataFrame(narrow), fit.sigma2_school, fit.sigma2_pupil, 1000.0)
    clipped = clipped.toPandas().set_index("school_id")
    n = clipped.n.astype(float)
    k = fit.sigma2_school / (fit.sigma2_school + fit.sigma2_pupil / n)
    mean_cva = narrow.groupby("school_id")[RESIDUAL].mean().loc[clipped.index]
    np.testing.assert_allclose(clipped.score - 1000.0, k * mean_cva, rtol=1e-10)


def test_school_scores_are_the_same_bits_in_any_row_order_or_partitioning(spark):
    """The mean pupil CVA per school is an exact mean (valueadded.sums): residuals of very
    different sizes, whose double sums depend on the order they are added in."""
    rng = np.random.default_rng(41)
    rows = 4_000
    residual = rng.normal(0, 1, rows) * 10.0 ** rng.integers(-6, 7, rows)
    data = pd.DataFrame({"school_id": rng.integers(0, 25, rows).astype(str), RESIDUAL: residual})
    frame = spark.createDataFrame(data)
    variants = [frame, frame.repartition(7), frame.orderBy(F.rand(seed=2)).coalesce(1), spark.createDataFrame(data.iloc[::-1])]
    scores = [
        shrunken_school_scores(variant, 4.0, 9.0, centre=100.0).toPandas().sort_values("school_id").reset_index(drop=True)
        for variant in variants
    ]
    for other in scores[1:]:
        pd.testing.assert_frame_equal(other, scores[0], check_exact=True)
    means = data.groupby("school_id")[RESIDUAL].mean().loc[scores[0].school_id]
    np.testing.assert_allclose(scores[0].mean_residual, means, rtol=1e-9)


def test_zero_school_variance_gives_centre_and_zero_width(spark):
    data = _school_data()
    frame = spark.createDataFrame(data).withColumn(RESIDUAL, F.col(OUTCOME) - 50.0)
    scores = shrunken_school_scores(frame, 0.0, 9.0, centre=100.0).toPandas()
    assert (scores.score == 100.0).all() and (scores.lower == 100.0).all() and (scores.upper == 100.0).all()
    assert (scores.shrinkage == 0.0).all()
