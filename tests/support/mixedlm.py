"""statsmodels' MixedLM REML fit as a reference, started as tests/unit/test_reml.py explains.

statsmodels 0.14.4's BFGS, from its default start (cov_re = 1 in units of the residual
variance), can stop early (on mlmRev's Exam it ends at -2 llf = 9347.183 against the
optimum 9346.5745). The reference fits therefore keep the default optimiser (BFGS; never
method="lbfgs") but start it at cov_re = 0.1 (a fixed, neutral value, not our estimate)
with gtol 1e-10, and check that it converged with BFGS alone (no fallback).
"""

from __future__ import annotations

import warnings

import numpy as np
from statsmodels.regression.mixed_linear_model import MixedLMParams


def reference_reml(model, gtol=1e-10):
    """statsmodels' REML fit of `model` (a MixedLM), from cov_re = 0.1, asserted converged."""
    k_fe = model.exog.shape[1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = model.fit(
            reml=True,
            gtol=gtol,
            start_params=MixedLMParams.from_components(fe_params=np.zeros(k_fe), cov_re=np.array([[0.1]])),
        )
    assert result.converged
    assert not any("Retrying MixedLM optimization" in str(w.message) for w in caught)
    return result


def max_rel_diff(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b) / np.abs(b)))
