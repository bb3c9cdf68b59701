"""Side-by-side coefficients and variance components of CVA fits (to compare model variants).

A fit is a :class:`~valueadded.cva.fit.RandomInterceptFit` or the ``cva_model`` rows of one
model (the release's published coefficients, e.g. read with ``valueadded.explore``).
"""

from __future__ import annotations

from typing import Mapping, Union

import numpy as np
import pandas as pd

from valueadded.cva.fit import INTERCEPT, RandomInterceptFit

Fit = Union[RandomInterceptFit, pd.DataFrame]


def _coefficients(fit: Fit) -> pd.DataFrame:
    """term-indexed estimate and std_error."""
    if isinstance(fit, RandomInterceptFit):
        return fit.coefficients[["estimate", "std_error"]]
    rows = fit[fit.term.notna()]
    if rows.model.nunique() != 1:
        raise ValueError(f"cva_model rows of exactly one model are needed, got {sorted(rows.model.unique())}")
    return rows.set_index("term")[["estimate", "std_error"]]


def _components(fit: Fit) -> dict:
    if isinstance(fit, RandomInterceptFit):
        return {"sigma2_school": fit.sigma2_school, "sigma2_pupil": fit.sigma2_pupil, "reml_criterion": fit.reml_criterion,
                "n_pupils": fit.n_pupils, "n_schools": fit.n_groups}
    first = fit.iloc[0]
    return {key: first[key] for key in ("sigma2_school", "sigma2_pupil", "reml_criterion", "n_pupils", "n_schools")}


def compare_coefficients(fits: Mapping[str, Fit]) -> pd.DataFrame:
    """One row per term of any fit (intercept first, then in order of first appearance).

    Columns: ``<name>_estimate`` and ``<name>_std_error`` per fit (NaN where the fit has
    no such term) and, for two or more fits, ``<name>_change`` for every fit after the
    first: its estimate minus the first fit's.
    """
    if not fits:
        raise ValueError("no fits to compare")
    tables = {name: _coefficients(fit) for name, fit in fits.items()}
    terms: list[str] = [INTERCEPT]
    for table in tables.values():
        terms += [t for t in table.index if t not in terms]
    out = pd.DataFrame(index=pd.Index(terms, name="term"))
    for name, table in tables.items():
        out[f"{name}_estimate"] = table.estimate.reindex(terms).astype(float)
        out[f"{name}_std_error"] = table.std_error.reindex(terms).astype(float)
    first, *others = tables
    for name in others:
        out[f"{name}_change"] = out[f"{name}_estimate"] - out[f"{first}_estimate"]
    return out


def compare_variance_components(fits: Mapping[str, Fit]) -> pd.DataFrame:
    """One row per fit: sigma2_school, sigma2_pupil, the school share (icc), REML criterion and size."""
    rows = {name: _components(fit) for name, fit in fits.items()}
    out = pd.DataFrame.from_dict(rows, orient="index")
    total = out.sigma2_school + out.sigma2_pupil
    out.insert(2, "icc", np.where(total > 0, out.sigma2_school / total, np.nan))
    return out
