"""KS2 measures on the generated cohort: properties that must hold for any data."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from pyspark.sql import functions as F

from valueadded.io.delta_store import TableStore
from valueadded.io.schemas import NATIONAL_ESTIMATES_UNSUPPRESSED, PUPIL_PROGRESS, PUPIL_RESULTS, RUNS, SCHOOL_SCORES
from valueadded.measures import estimates
from valueadded.measures.ks2 import load_tables

YEAR = 2024


@pytest.fixture(scope="module")
def ks2_release(spark, generated_release):
    """The shared release of the generated cohort (tests/conftest.py)."""
    assert generated_release.year == YEAR
    return generated_release.root, TableStore(spark, generated_release.output_dir)


def _table(store, schema, stage):
    return store.read(schema, YEAR, "ks2", stage).toPandas()


def test_estimates_are_means_of_pupil_outcomes(ks2_release):
    _, store = ks2_release
    for stage in ("unvalidated", "validated"):
        progress = _table(store, PUPIL_PROGRESS, stage)
        national = progress[progress.in_national]
        recomputed = national.groupby(["subject", "prior_attainment_group"]).outcome.agg(["mean", "count"])
        published = _table(store, NATIONAL_ESTIMATES_UNSUPPRESSED, stage).set_index(["subject", "prior_attainment_group"])
        joined = published.join(recomputed, how="outer")
        assert joined["estimate"].to_numpy() == pytest.approx(joined["mean"].to_numpy(), abs=1e-9)
        assert (joined["n"] == joined["count"]).all()


def test_mean_progress_within_each_group_is_zero_before_adjustment(ks2_release):
    _, store = ks2_release
    progress = _table(store, PUPIL_PROGRESS, "validated")
    means = progress[progress.in_national].groupby(["subject", "prior_attainment_group"]).progress.mean()
    assert means.abs().max() < 1e-9
    # About 1% of national pupils per subject are capped, never more.
    capped_share = progress[progress.in_national].groupby("subject").capped.mean()
    assert ((capped_share > 0.002) & (capped_share <= 0.0101)).all()


def test_school_progress_is_the_mean_of_its_pupils(ks2_release):
    _, store = ks2_release
    progress = _table(store, PUPIL_PROGRESS, "unvalidated")
    scored = progress[progress.in_progress]
    recomputed = scored.groupby(["school_id", "subject"]).adjusted_progress.agg(["mean", "count"]).reset_index()
    recomputed["measure"] = "progress_" + recomputed.subject
    schools = _table(store, SCHOOL_SCORES, "unvalidated").merge(recomputed, on=["school_id", "measure"], how="inner")
    assert len(schools) == len(recomputed)
    assert schools.score.to_numpy() == pytest.approx(schools["mean"].to_numpy(), abs=1e-9)
    assert (schools.n == schools["count"]).all()


def test_a_pupil_without_a_score_has_a_reason_and_a_pupil_with_one_has_none(ks2_release):
    _, store = ks2_release
    for stage in ("unvalidated", "validated"):
        progress = _table(store, PUPIL_PROGRESS, stage)
        assert (progress.in_progress == progress.progress.notna()).all(), stage
        assert (progress.in_progress == progress.exclusion_reason.isna()).all(), stage
        assert (progress.in_progress | ~progress.in_national).all(), stage


def test_pupil_table_has_prior_attainment_and_stages_differ_by_checking_exercise(ks2_release):
    root, store = ks2_release
    unvalidated = _table(store, PUPIL_RESULTS, "unvalidated").set_index("pupil_id")
    validated = _table(store, PUPIL_RESULTS, "validated").set_index("pupil_id")
    assert unvalidated.prior_attainment_group.notna().mean() > 0.9
    # Validated = unvalidated - discounted - removed + added at checking.
    included_before = set(unvalidated.index[unvalidated.included])
    included_after = set(validated.index[validated.included])
    discounted = set(validated.index[validated.exclusion_reason == "discounted"])
    removed = set(validated.index[validated.exclusion_reason == "removed_at_checking"])
    added = set(unvalidated.index[unvalidated.exclusion_reason == "added_at_checking"])
    assert discounted
    assert included_before - included_after == (discounted | removed) & included_before
    assert included_after - included_before == added & included_after


def test_attainment_counts_every_included_pupil(ks2_release):
    _, store = ks2_release
    pupils = _table(store, PUPIL_RESULTS, "unvalidated")
    schools = _table(store, SCHOOL_SCORES, "unvalidated")
    rwm = schools[schools.measure == "pct_expected_rwm"]
    assert rwm.n.sum() == pupils.included.sum()
    assert rwm.score.between(0, 100).all()
    average = schools[schools.measure == "average_scaled_score_reading"]
    assert average.score.between(80, 120).all()


def test_outputs_do_not_depend_on_row_order_or_partitioning(ks2_release, spark):
    _, store = ks2_release
    columns = ["pupil_id", "school_id", "subject", "prior_attainment_group", "outcome", "in_progress", "in_national"]
    long = store.read(PUPIL_PROGRESS, YEAR, "ks2", "validated").select(*columns)
    rules = load_tables(YEAR).rules
    variants = [long, long.repartition(7), long.orderBy(F.rand(3)).repartition(3, "school_id")]
    results = [estimates.progress_measures(variant, rules) for variant in variants]
    baseline = results[0]
    base_estimates = baseline["estimates"].toPandas().sort_values(["subject", "prior_attainment_group"]).reset_index(drop=True)
    base_schools = baseline["schools"].toPandas().sort_values(["school_id", "subject"]).reset_index(drop=True)
    # Exactly equal, to the last bit: every sum of doubles is exact (valueadded.sums).
    for other in results[1:]:
        assert other["z_star"] == baseline["z_star"]
        assert other["national_sd"] == baseline["national_sd"]
        other_estimates = other["estimates"].toPandas().sort_values(["subject", "prior_attainment_group"]).reset_index(drop=True)
        other_schools = other["schools"].toPandas().sort_values(["school_id", "subject"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(base_estimates, other_estimates, check_exact=True)
        pd.testing.assert_frame_equal(base_schools, other_schools, check_exact=True)


def test_run_log_records_z_star(ks2_release):
    _, store = ks2_release
    runs = store.read(RUNS).where(F.col("key_stage") == "ks2").toPandas()
    assert len(runs) == 2
    for counts in runs.row_counts_json:
        z_star = json.loads(counts)["ks2_z_star"]
        assert set(z_star) == {"reading", "writing", "maths"} and all(value < -1 for value in z_star.values())
