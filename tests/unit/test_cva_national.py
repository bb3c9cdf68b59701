"""Parameter recovery of the KS4 CVA model on the national-size generated cohort.

The whole generated nation (scale 1, seed 11: ~540,000 KS4 pupils with prior attainment
in ~3,400 state-funded mainstream schools), the full KS2-4 specification (52 design
columns), gathered in one Spark pass and fitted by REML, exactly as in the release. The
smaller cohort of test_cva_cohort.py checks agreement with statsmodels; this one checks
that the fit finds the generator's true model at the size it is used at.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from test_cva_cohort import Cohort

pytestmark = pytest.mark.slow  # the national cohort: ~30-60 s on a 2-core machine


@pytest.fixture(scope="module")
def nation(spark, tmp_path_factory):
    case = Cohort(spark, tmp_path_factory.mktemp("cva_national"), scale=1.0)
    yield case
    case.design.unpersist()


def test_national_fit_recovers_every_true_coefficient(nation):
    """Each of the 52 true coefficients within 3 standard errors of its estimate, and the
    sum of z^2 a plausible chi-square(52) value (errors neither too small nor too large)."""
    table = nation.fit.coefficients.copy()
    table["true"] = pd.Series(nation.truth["coefficients"])
    assert table["true"].notna().all() and len(table) >= 50
    z = (table.estimate - table["true"]) / table.std_error
    print(f"national recovery: {len(z)} coefficients, max |z| {z.abs().max():.2f}, sum z^2 {float(z @ z):.1f}")
    assert z.abs().max() < 3.0, z.abs().sort_values().tail(5).to_dict()
    low, high = sps.chi2.ppf([0.0005, 0.9995], len(z))
    assert low < float(z @ z) < high, float(z @ z)
    assert nation.fit.n_pupils > 500_000 and nation.fit.n_groups > 3_000


def test_national_school_intervals_cover_93_to_97_percent_of_true_effects(nation):
    effects = pd.read_parquet(nation.root / "ground_truth" / "school_effects.parquet")
    effects = effects[effects.outcome == "ks4_attainment8"].set_index("school_id").school_effect
    fitted = nation.fit.group_effects.set_index("group")
    true = effects.loc[fitted.index]
    covered = float(((fitted.lower <= true) & (true <= fitted.upper)).mean())
    print(f"national coverage: {covered:.2%} of {len(fitted)} schools")
    assert 0.93 <= covered <= 0.97, covered
    # The intervals are not trivially wide: their mean half-width is below the true effects' SD.
    assert float(((fitted.upper - fitted.lower) / 2).mean()) < float(np.std(true))
