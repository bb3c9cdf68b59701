"""Comparing CVA fits side by side (valueadded.cva.compare), on cva_model-shaped rows."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from valueadded.cva.compare import compare_coefficients, compare_variance_components


def _model_rows(model, terms, estimates, errors, s2u=2.0, s2e=18.0):
    return pd.DataFrame({
        "model": model, "population": "mainstream", "spec_file": f"models/{model}.yaml", "status": "fitted", "message": None,
        "term": terms, "term_stage": "prior_attainment", "term_mean": 1.0, "estimate": estimates, "std_error": errors,
        "sigma2_school": s2u, "sigma2_pupil": s2e, "reml_criterion": 1234.5, "n_pupils": 1000, "n_schools": 40,
        "boundary": False, "converged": True, "gather_seconds": 0.5, "fit_seconds": 0.01,
    })


def test_compare_coefficients_aligns_terms_and_gives_the_change():
    release = _model_rows("main", ["intercept", "prior_aps", "fsm"], [10.0, 2.0, -1.0], [1.0, 0.5, 0.2])
    variant = _model_rows("variant", ["intercept", "prior_aps", "idaci"], [11.0, 1.5, -3.0], [1.0, 0.4, 0.9], s2u=1.0)
    table = compare_coefficients({"release": release, "variant": variant})
    assert table.index.tolist() == ["intercept", "prior_aps", "fsm", "idaci"]
    assert table.loc["prior_aps", "variant_change"] == pytest.approx(-0.5)
    assert math.isnan(table.loc["fsm", "variant_estimate"]) and math.isnan(table.loc["idaci", "release_estimate"])
    components = compare_variance_components({"release": release, "variant": variant})
    assert components.icc.tolist() == pytest.approx([0.1, 1 / 19])
    with pytest.raises(ValueError, match="exactly one model"):
        compare_coefficients({"both": pd.concat([release, variant])})
