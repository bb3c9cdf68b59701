"""Comparing CVA fits side by side (valueadded.cva.compare), on cva_model-shaped rows."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from support.cva_model import cva_model_rows
from valueadded.cva.compare import compare_coefficients, compare_variance_components


def test_compare_coefficients_aligns_terms_and_gives_the_change():
    release = cva_model_rows("main", ["intercept", "prior_aps", "fsm"], [10.0, 2.0, -1.0], [1.0, 0.5, 0.2])
    variant = cva_model_rows("variant", ["intercept", "prior_aps", "idaci"], [11.0, 1.5, -3.0], [1.0, 0.4, 0.9], s2u=1.0)
    table = compare_coefficients({"release": release, "variant": variant})
    assert table.index.tolist() == ["intercept", "prior_aps", "fsm", "idaci"]
    assert table.loc["prior_aps", "variant_change"] == pytest.approx(-0.5)
    assert math.isnan(table.loc["fsm", "variant_estimate"]) and math.isnan(table.loc["idaci", "release_estimate"])
    components = compare_variance_components({"release": release, "variant": variant})
    assert components.icc.tolist() == pytest.approx([0.1, 1 / 19])
    with pytest.raises(ValueError, match="exactly one model"):
        compare_coefficients({"both": pd.concat([release, variant])})
