"""Shared fixtures: one SparkSession for the whole run (starting one costs ~7 s) and one
release of a small generated cohort that the end-to-end tests read (a release costs
30-60 s here, so it is run once, not once per test module)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from valueadded.spark import get_spark

GENERATED_YEAR, GENERATED_SEED, GENERATED_SCALE = 2024, 7, 0.02


@pytest.fixture(scope="session")
def spark():
    session = get_spark(shuffle_partitions=4)
    yield session
    session.stop()


@dataclass(frozen=True)
class GeneratedRelease:
    """`valueadded release --key-stage both --stage both` on a generated cohort.

    root/input holds the generated inputs, root/output the Delta tables. Read-only for
    tests: a test that writes (a re-run, a failed run) copies what it needs first.
    """

    root: Path
    manifest: dict
    year: int
    seed: int
    scale: float

    @property
    def input_dir(self) -> Path:
        return self.root / "input"

    @property
    def output_dir(self) -> Path:
        return self.root / "output"


@pytest.fixture(scope="session")
def generated_release(spark, tmp_path_factory) -> GeneratedRelease:
    from valueadded.cli import main
    from valueadded.synth.cohort import generate_cohort

    root = tmp_path_factory.mktemp("generated_release")
    manifest = generate_cohort(root / "input", year=GENERATED_YEAR, seed=GENERATED_SEED, scale=GENERATED_SCALE, files=2)
    code = main(["release", "--input", str(root / "input"), "--output", str(root / "output"),
                 "--year", str(GENERATED_YEAR), "--key-stage", "both", "--stage", "both"])
    assert code == 0
    return GeneratedRelease(root, manifest, GENERATED_YEAR, GENERATED_SEED, GENERATED_SCALE)
