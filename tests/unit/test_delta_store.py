"""The Delta table store: one partition replaced per write, schemas checked first."""

from __future__ import annotations

import dataclasses

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F

from valueadded.io.delta_store import SchemaMismatchError, TableStore
from valueadded.io.schemas import PARTITION_COLUMNS, Column, TableSchema

SCORES = TableSchema(
    name="scores",
    grain="one row per school",
    partition_by=("academic_year", "key_stage", "data_stage"),
    columns=(*PARTITION_COLUMNS, Column("school_id", "string", False), Column("score", "double", True), Column("n", "int", False)),
)


def _frame(spark, rows):
    return spark.createDataFrame(rows, "school_id string, score double, n int")


def _partition_rows(store, **partition):
    return sorted((r.school_id, r.score, r.n) for r in store.read(SCORES, **partition).collect())


def test_replaces_exactly_one_partition(spark, tmp_path):
    store = TableStore(spark, tmp_path)
    assert store.backend == "delta-rs"
    v0 = store.replace_partition(_frame(spark, [("A", 0.5, 10), ("B", -0.2, 20)]), SCORES, 2024, "ks2", "unvalidated")
    store.replace_partition(_frame(spark, [("A", 0.4, 9)]), SCORES, 2024, "ks2", "validated")
    store.replace_partition(_frame(spark, [("Z", 1.0, 5)]), SCORES, 2024, "ks4", "unvalidated")
    v3 = store.replace_partition(_frame(spark, [("C", 0.1, 30)]), SCORES, 2024, "ks2", "unvalidated")
    assert (v0, v3) == (0, 3)  # the first write creates the table: no empty version
    assert _partition_rows(store, year=2024, key_stage="ks2", data_stage="unvalidated") == [("C", 0.1, 30)]
    assert _partition_rows(store, year=2024, key_stage="ks2", data_stage="validated") == [("A", 0.4, 9)]
    assert _partition_rows(store, year=2024, key_stage="ks4", data_stage="unvalidated") == [("Z", 1.0, 5)]
    # Time travel: version 0 still holds the first write.
    assert sorted(r.school_id for r in store.read(SCORES, version=0).collect()) == ["A", "B"]
    # Partition columns come back with their declared types.
    assert dict(store.read(SCORES).dtypes)["academic_year"] == "int"


def test_wrong_type_is_refused_before_writing(spark, tmp_path):
    store = TableStore(spark, tmp_path)
    store.replace_partition(_frame(spark, [("A", 0.5, 10)]), SCORES, 2024, "ks2", "unvalidated")
    as_double = _frame(spark, [("A", 0.5, 10)]).withColumn("n", F.col("n").cast("double"))
    with pytest.raises(SchemaMismatchError, match="n is double, declared int"):
        store.replace_partition(as_double, SCORES, 2024, "ks2", "unvalidated")
    missing = _frame(spark, [("A", 0.5, 10)]).drop("score")
    with pytest.raises(SchemaMismatchError, match=r"missing \['score'\]"):
        store.replace_partition(missing, SCORES, 2024, "ks2", "unvalidated")
    assert store.version(SCORES) == 0


def test_null_in_non_null_column_leaves_table_unchanged(spark, tmp_path):
    store = TableStore(spark, tmp_path)
    store.replace_partition(_frame(spark, [("A", 0.5, 10)]), SCORES, 2024, "ks2", "unvalidated")
    with pytest.raises(SchemaMismatchError, match="null value.*non-null column n"):
        store.replace_partition(_frame(spark, [("B", 0.5, None)]), SCORES, 2024, "ks2", "unvalidated")
    assert store.version(SCORES) == 0
    assert _partition_rows(store) == [("A", 0.5, 10)]


def test_existing_table_with_other_schema_is_not_overwritten(spark, tmp_path):
    store = TableStore(spark, tmp_path)
    store.replace_partition(_frame(spark, [("A", 0.5, 10)]), SCORES, 2024, "ks2", "unvalidated")
    changed = TableSchema(name="scores", grain="", partition_by=SCORES.partition_by, columns=(*SCORES.columns[:-1], Column("n", "long", False)))
    frame = _frame(spark, [("A", 0.5, 10)]).withColumn("n", F.col("n").cast("long"))
    with pytest.raises(SchemaMismatchError, match="existing table schema differs"):
        store.replace_partition(frame, changed, 2024, "ks2", "unvalidated")


def test_data_is_written_once_in_place_and_committed_with_row_counts(spark, tmp_path):
    """Spark's files are committed where they lie (no second copy), each with its row
    count in the Delta log, and nothing is left in the staging folder."""
    store = TableStore(spark, tmp_path)
    frame = spark.range(100).select(F.col("id").cast("string").alias("school_id"), F.lit(0.0).alias("score"), F.col("id").cast("int").alias("n"))
    store.replace_partition(frame.repartition(3), SCORES, 2024, "ks2", "unvalidated")
    table = DeltaTable(str(store.path(SCORES)))
    actions = pa.record_batch(table.get_add_actions(flatten=True)).to_pydict()
    # Three partitions in, at most one file per core out (valueadded.spark.partitions_per_core).
    files = min(3, spark.sparkContext.defaultParallelism)
    assert files > 1 and len(actions["path"]) == files and sum(actions["num_records"]) == 100
    assert all(path.startswith("academic_year=2024/key_stage=ks2/data_stage=unvalidated/") for path in actions["path"])
    data_files = sorted(p.relative_to(store.path(SCORES)).as_posix() for p in store.path(SCORES).rglob("*.parquet"))
    assert data_files == sorted(actions["path"])
    assert not list(store.path(SCORES).glob("_staging*"))
    assert store.read(SCORES).count() == 100


def test_runs_staging_into_one_table_at_once_share_no_folder_and_leave_each_others_alone(spark, tmp_path, monkeypatch):
    """Runs of two partitions of one table stage at the same time. Each stages in a folder
    of its own directly in the table's folder, so neither run's clean-up can remove a
    folder the other is writing into (with one shared `_staging` folder, removed once
    empty, a run could remove it just as the other's Spark created its folder in it)."""
    import shutil
    from pathlib import Path

    from valueadded.io import delta_store

    store = TableStore(spark, tmp_path)
    store.replace_partition(_frame(spark, [("A", 0.5, 10)]), SCORES, 2023, "ks2", "unvalidated")  # the table exists
    other_run = store.path(SCORES) / "_staging-other-run"
    (other_run / "_temporary").mkdir(parents=True)  # another run's Spark write in progress
    removed = []
    original_rmtree = shutil.rmtree

    def recorded(path, *args, **kwargs):
        removed.append(Path(path))
        original_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(delta_store.shutil, "rmtree", recorded)
    staged = store.stage_partition(_frame(spark, [("B", 0.1, 5)]), SCORES, 2024, "ks2", "unvalidated")
    store.commit(staged)
    monkeypatch.undo()

    assert [path.parent for path in removed] == [store.path(SCORES)]  # only its own folder, in the table's folder
    assert removed[0].name.startswith("_staging-") and removed[0] != other_run
    assert (other_run / "_temporary").is_dir()
    assert _partition_rows(store, year=2024, key_stage="ks2", data_stage="unvalidated") == [("B", 0.1, 5)]


def test_the_delta_spark_backend_stages_beside_its_audience_and_discards_what_it_staged(spark, tmp_path):
    """delta-spark stages Parquet that its commit copies into the table (the commit needs
    the Delta JARs; staging does not). A restricted table's rows are staged under
    restricted/, and a partition that will not be committed leaves nothing behind."""
    store = TableStore(spark, tmp_path, backend="delta-spark")
    staged = store.stage_partition(_frame(spark, [("A", 0.5, 10)]), SCORES, 2024, "ks2", "unvalidated")
    assert SCORES.audience == "restricted"
    assert staged.staging_dir.parent == tmp_path / "restricted" and staged.staging_dir.name.startswith("_staging-scores-")
    assert spark.read.parquet(str(staged.staging_dir)).count() == 1
    published = dataclasses.replace(SCORES, audience="published")
    other = store.stage_partition(_frame(spark, [("B", 0.1, 5)]), published, 2024, "ks2", "unvalidated")
    assert other.staging_dir.parent == tmp_path / "published" and other.staging_dir.name.startswith("_staging-scores-")

    store.discard(staged)
    store.discard(other)
    assert not list(tmp_path.glob("*/_staging*"))


def test_a_failed_publication_discards_the_staged_partitions_it_did_not_commit(spark, tmp_path, monkeypatch):
    from valueadded.io import publish as publishing

    store = TableStore(spark, tmp_path, backend="delta-spark")
    first, second = (store.stage_partition(_frame(spark, [(school, 0.5, 10)]), dataclasses.replace(SCORES, name=name), 2024, "ks2", "unvalidated")
                     for school, name in (("A", "scores"), ("B", "other_scores")))

    def commit_fails(item):
        raise OSError("cluster storage unavailable")

    monkeypatch.setattr(store, "commit", commit_fails)
    monkeypatch.setattr(publishing, "recover_partition", lambda *args: [])  # nothing committed to put back
    with pytest.raises(OSError, match="cluster storage unavailable"):
        publishing.publish(store, [first, second], "failing")
    assert not first.staging_dir.exists() and not second.staging_dir.exists()
    assert not list(tmp_path.glob("*/_staging*"))
