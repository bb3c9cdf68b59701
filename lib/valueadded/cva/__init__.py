"""Contextual value added: a random-intercept model fitted by REML from Spark sufficient statistics.

``fit_random_intercept`` fits any ``outcome ~ terms + (1 | group)`` model to a Spark
DataFrame; ``spec``, ``design``, ``apply`` and ``stage`` turn conf/models/*.yaml into the
release's CVA stage (SPEC 2.3). ``reml`` is the estimator itself, pure numpy/scipy: the
public names below are loaded on first use so that importing it does not start PySpark.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["fit_random_intercept", "RandomInterceptFit", "MissingValuesError"]

if TYPE_CHECKING:
    from valueadded.cva.fit import MissingValuesError, RandomInterceptFit, fit_random_intercept


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("valueadded.cva.fit"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
