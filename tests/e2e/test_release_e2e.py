"""The whole release, end to end, on a small generated cohort, through the command line."""

from __future__ import annotations

import json
import shutil

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F

from valueadded.cli import main
from valueadded.config import DEFAULT_RELEASE_CONFIG
from valueadded.io.delta_store import TableStore
from valueadded.io.schemas import PUPIL_RESULTS, REJECTED_ROWS, RUNS

from support.pseudonyms import TEST_KEY, pseudonymised

YEAR = 2024


@pytest.fixture(scope="module")
def released(spark, generated_release):
    """The shared release of the generated cohort (tests/conftest.py): both key stages and stages."""
    assert generated_release.year == YEAR
    return generated_release.root, generated_release.manifest, TableStore(spark, generated_release.output_dir)


def _input_rows(root, table, **equals):
    frame = ds.dataset(str(root / "input" / table), format="parquet").to_table().to_pandas()
    for column, value in equals.items():
        frame = frame[frame[column] == value]
    return frame


def test_every_partition_written_and_every_pupil_accounted_for(released):
    root, _, store = released
    runs = store.read(RUNS).toPandas()
    assert set(zip(runs.key_stage, runs.data_stage, runs.status)) == {
        (ks, stage, "succeeded") for ks in ("ks2", "ks4") for stage in ("unvalidated", "validated")
    }
    for run in runs.itertuples():
        counts = json.loads(run.row_counts_json)
        assert all(check["holds"] for check in counts["reconciliation"].values())
        pupils_in = len(_input_rows(root, "pupils", key_stage=run.key_stage))
        written = store.read(PUPIL_RESULTS, YEAR, run.key_stage, run.data_stage).count()
        rejected = store.read(REJECTED_ROWS, YEAR, run.key_stage, run.data_stage).where(F.col("source_table") == "pupils").count()
        assert pupils_in == written + rejected
        assert counts["pupil_results"]["rows"] == written
        assert json.loads(run.input_fingerprints_json).keys() >= {"pupils", "schools", f"{run.key_stage}_results"}


def test_data_stages_differ_exactly_by_checking_exercise_and_discounting(released):
    root, _, store = released
    for key_stage in ("ks2", "ks4"):
        unvalidated = store.read(PUPIL_RESULTS, YEAR, key_stage, "unvalidated").toPandas().set_index("pupil_id")
        validated = store.read(PUPIL_RESULTS, YEAR, key_stage, "validated").toPandas().set_index("pupil_id")
        amendments = _input_rows(root, "amendments", key_stage=key_stage)
        # Output pupil ids are pseudonyms of the input ids.
        added = pseudonymised(amendments[amendments.action == "add"].pupil_id) & set(unvalidated.index)
        removed = pseudonymised(amendments[amendments.action == "remove"].pupil_id) & set(validated.index)
        assert added and removed, "the generated cohort should exercise both amendment kinds"
        assert set(unvalidated[unvalidated.exclusion_reason == "added_at_checking"].index) == added
        assert set(validated[validated.exclusion_reason == "removed_at_checking"].index) == removed
        discounted = set(validated[validated.exclusion_reason == "discounted"].index)
        assert discounted and discounted <= set(validated[validated.discountable].index)
        # Unvalidated data counts discounted pupils; validated data does not.
        assert "discounted" not in set(unvalidated.exclusion_reason.dropna())
        counted = unvalidated.loc[list(discounted - added - removed)]
        assert set(counted.exclusion_reason.dropna()) <= {"independent_school"}
        assert counted.included.sum() > 0


def test_run_log_says_what_the_amendments_changed(released):
    root, _, store = released
    runs = store.read(RUNS).toPandas()
    for key_stage in ("ks2", "ks4"):
        amendments = _input_rows(root, "amendments", key_stage=key_stage)
        logged = {}
        for stage in ("unvalidated", "validated"):
            (run,) = runs[(runs.key_stage == key_stage) & (runs.data_stage == stage)].itertuples()
            logged[stage] = json.loads(run.row_counts_json)["amendments"]
            pupils = store.read(PUPIL_RESULTS, YEAR, key_stage, stage).toPandas()
            changed = logged[stage]["rows_changed"]
            assert changed["removed_at_checking"] == (pupils.exclusion_reason == "removed_at_checking").sum()
            assert changed["added_at_checking_held_back"] == (pupils.exclusion_reason == "added_at_checking").sum()
            assert changed["results_corrected"] == pupils.amended.sum()
        assert logged["validated"]["applied"] and not logged["unvalidated"]["applied"]
        assert logged["validated"]["rows_changed"]["removed_at_checking"] > 0
        assert logged["validated"]["rows_changed"]["results_corrected"] > 0
        assert logged["unvalidated"]["rows_changed"]["added_at_checking_held_back"] > 0
        assert logged["unvalidated"]["rows_changed"]["results_corrected"] == 0
        accepted = logged["validated"]["accepted"]
        assert accepted["remove"]["amendments"] <= (amendments.action == "remove").sum()
        assert sum(v["amendments"] for k, v in accepted.items() if k.startswith("correct ")) > 0


def test_rerun_replaces_its_partition_and_keeps_the_other(released, spark, tmp_path):
    root, _, _ = released
    shutil.copytree(root / "output", tmp_path / "output")  # the shared release stays as it was
    store = TableStore(spark, tmp_path / "output")
    before = DeltaTable(str(store.path(PUPIL_RESULTS))).version()
    validated_before = store.read(PUPIL_RESULTS, YEAR, "ks2", "validated").count()
    unvalidated_rows = sorted(map(tuple, store.read(PUPIL_RESULTS, YEAR, "ks2", "unvalidated").toPandas().astype(str).values))
    assert main(["release", "--input", str(root / "input"), "--output", str(tmp_path / "output"), "--year", str(YEAR), "--key-stage", "ks2", "--stage", "unvalidated"]) == 0
    assert DeltaTable(str(store.path(PUPIL_RESULTS))).version() == before + 1
    assert store.read(PUPIL_RESULTS, YEAR, "ks2", "validated").count() == validated_before
    again = sorted(map(tuple, store.read(PUPIL_RESULTS, YEAR, "ks2", "unvalidated").toPandas().astype(str).values))
    assert again == unvalidated_rows

    # The first run is still reproducible exactly from the run log, after the re-run.
    runs = store.read(RUNS).where((F.col("key_stage") == "ks2") & (F.col("data_stage") == "unvalidated")).orderBy("started_at").toPandas()
    first, second = runs.run_id
    assert json.loads(runs.table_versions_json[0])["pupil_results"] < json.loads(runs.table_versions_json[1])["pupil_results"]
    assert main(["snapshot", "--output", str(tmp_path / "output"), "--run", first, "--to", str(tmp_path / "first")]) == 0
    exported = pq.read_table(tmp_path / "first" / "pupil_results.parquet").to_pandas()
    assert sorted(map(tuple, exported.astype(str).values)) == unvalidated_rows
    manifest = json.loads((tmp_path / "first" / "manifest.json").read_text())
    assert manifest["partition"] == [YEAR, "ks2", "unvalidated"] and manifest["run_id"] == first
    assert manifest["pseudonym_key_fingerprint"] == TEST_KEY.fingerprint
    assert set(manifest["rows"]) == set(json.loads(runs.table_versions_json[0]))
    assert main(["snapshot", "--output", str(tmp_path / "output"), "--run", "no-such-run", "--to", str(tmp_path / "x")]) == 2


def test_bad_input_exit_codes(released, tmp_path):
    root, _, _ = released
    assert main(["release", "--input", str(tmp_path / "nowhere"), "--output", str(tmp_path / "out"), "--key-stage", "ks2"]) == 2
    strict = tmp_path / "strict.yaml"
    strict.write_text(
        DEFAULT_RELEASE_CONFIG.read_text()
        .replace("max_rejected_share: 0.01", "max_rejected_share: 0.0")
        .replace("reference: ../reference/codes.yaml", f"reference: {DEFAULT_RELEASE_CONFIG.parent.parent / 'reference' / 'codes.yaml'}")
        .replace("rollup: ../rollup/default.yaml", f"rollup: {DEFAULT_RELEASE_CONFIG.parent.parent / 'rollup' / 'default.yaml'}")
    )
    # One bad row in a copy of the input makes the strict run stop with exit code 3.
    copy = tmp_path / "input"
    shutil.copytree(root / "input", copy)
    schools = ds.dataset(str(copy / "schools"), format="parquet").to_table()
    shutil.rmtree(copy / "schools")
    (copy / "schools").mkdir()
    bad = schools.slice(0, 1).set_column(schools.schema.get_field_index("phase"), "phase", [["nursery"]])
    pq.write_table(schools.slice(1).cast(schools.schema), copy / "schools" / "part-0.parquet")
    pq.write_table(bad.cast(schools.schema), copy / "schools" / "part-1.parquet")
    code = main(["release", "--input", str(copy), "--output", str(tmp_path / "out"), "--key-stage", "ks2", "--config", str(strict)])
    assert code == 3
    runs = TableStore(released[2].spark, tmp_path / "out").read(RUNS).toPandas()
    # Both failed runs are in the run log, each with its reason.
    assert list(runs.status) == ["failed", "failed"]
    assert any("missing_file" in error for error in runs.error) and any("max_rejected_share" in error for error in runs.error)
