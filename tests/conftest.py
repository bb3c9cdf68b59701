"""One SparkSession for the whole test run (starting one costs ~7 s)."""

from __future__ import annotations

import pytest

from valueadded.spark import get_spark


@pytest.fixture(scope="session")
def spark():
    session = get_spark(shuffle_partitions=4)
    yield session
    session.stop()
