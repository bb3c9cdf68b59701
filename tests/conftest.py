"""Shared fixtures: one SparkSession for the whole run (starting one costs ~7 s), the
pupil pseudonym key every release in the tests uses, and one release of a small
generated cohort that the end-to-end tests read (a release costs 30-60 s here, so it is
run once, not once per test module)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from valueadded.io.pseudonym import DEFAULT_KEY_VARIABLE, PseudonymKey
from valueadded.spark import get_spark

from support.pseudonyms import TEST_KEY

GENERATED_YEAR, GENERATED_SEED, GENERATED_SCALE = 2024, 7, 0.02


@pytest.fixture(scope="session", autouse=True)
def pseudonym_key() -> PseudonymKey:
    """The generated cohort's development key (valueadded.synth), set explicitly in this
    session's environment as a scheduler sets the real one: releases read it from there,
    and processes the tests start inherit it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(DEFAULT_KEY_VARIABLE, TEST_KEY.secret.decode())
        yield PseudonymKey.from_environment()


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
    # The store's log line of every partition the release wrote (valueadded.io.delta_store).
    writes: list[dict] = field(default_factory=list)

    @property
    def input_dir(self) -> Path:
        return self.root / "input"

    @property
    def output_dir(self) -> Path:
        return self.root / "output"


@pytest.fixture(scope="session")
def generated_release(spark, tmp_path_factory, pseudonym_key) -> GeneratedRelease:
    from valueadded.cli import main
    from valueadded.synth.cohort import generate_cohort

    root = tmp_path_factory.mktemp("generated_release")
    manifest = generate_cohort(root / "input", year=GENERATED_YEAR, seed=GENERATED_SEED, scale=GENERATED_SCALE, files=2)
    writes: list[dict] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: writes.append(json.loads(record.getMessage()))
    store_log = logging.getLogger("valueadded.io.delta_store")
    level, store_log.level = store_log.level, logging.INFO
    store_log.addHandler(handler)
    try:
        code = main(["release", "--input", str(root / "input"), "--output", str(root / "output"),
                     "--year", str(GENERATED_YEAR), "--key-stage", "both", "--stage", "both"])
    finally:
        store_log.removeHandler(handler)
        store_log.setLevel(level)
    assert code == 0
    return GeneratedRelease(root, manifest, GENERATED_YEAR, GENERATED_SEED, GENERATED_SCALE, writes)
