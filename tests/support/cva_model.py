"""`cva_model` rows of one fitted model, built in code, for the report and comparison tests."""

from __future__ import annotations

import pandas as pd


def cva_model_rows(model, terms, estimates, errors, s2u=2.0, s2e=18.0) -> pd.DataFrame:
    """One row per term of a fitted model, with the cva_model columns the readers use."""
    return pd.DataFrame({
        "model": model, "population": "mainstream", "spec_file": f"models/{model}.yaml", "status": "fitted", "message": None,
        "term": terms, "term_stage": "prior_attainment", "term_mean": 1.0, "estimate": estimates, "std_error": errors,
        "sigma2_school": s2u, "sigma2_pupil": s2e, "reml_criterion": 1234.5, "n_pupils": 1000, "n_schools": 40,
        "boundary": False, "converged": True, "gather_seconds": 0.5, "fit_seconds": 0.01,
    })
