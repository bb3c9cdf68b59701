"""Dates as Arrow date32 values (days since 1970-01-01), vectorised."""

from __future__ import annotations

import datetime as dt

import numpy as np

EPOCH = dt.date(1970, 1, 1)


def days(date: dt.date) -> int:
    """Days since 1970-01-01 (the Arrow date32 value) of one date."""
    return (date - EPOCH).days


def first_of_month(day_numbers: np.ndarray) -> np.ndarray:
    """The first day of each date's month, as days since 1970-01-01."""
    months = (np.datetime64("1970-01-01") + day_numbers.astype("timedelta64[D]")).astype("datetime64[M]")
    return (months.astype("datetime64[D]") - np.datetime64("1970-01-01")).astype(np.int64)


def calendar_month(day_numbers: np.ndarray) -> np.ndarray:
    """Calendar month (1-12) of each date."""
    months = (np.datetime64("1970-01-01") + day_numbers.astype("timedelta64[D]")).astype("datetime64[M]")
    return months.astype(np.int64) % 12 + 1
