"""Publishing a release: all tables or none, one run per partition, recovery after a kill."""

from __future__ import annotations

import json
import os
import signal
import shutil
import subprocess
import sys
import time

import pytest
from pyspark.sql import functions as F

from valueadded.cli import EXIT_BUSY, main
from valueadded.io import publish as publishing
from valueadded.io.delta_store import TableStore
from valueadded.io.publish import PartitionLock, PartitionLockedError, journal_path, publish, recover_partition
from valueadded.io.schemas import OUTPUT_TABLES, PARTITION_COLUMNS, Column, TableSchema

PARTITION = (2024, "ks2", "unvalidated")
SCORES = TableSchema(
    name="scores", grain="one row per school", partition_by=("academic_year", "key_stage", "data_stage"),
    columns=(*PARTITION_COLUMNS, Column("school_id", "string", False), Column("score", "double", True)),
)
COUNTS = TableSchema(
    name="counts", grain="one row per school", partition_by=("academic_year", "key_stage", "data_stage"),
    columns=(*PARTITION_COLUMNS, Column("school_id", "string", False), Column("n", "int", False)),
)
SCHEMAS = {"scores": SCORES, "counts": COUNTS}


def _scores(spark, value):
    return spark.createDataFrame([("A", value), ("B", value + 1)], "school_id string, score double")


def _counts(spark, n):
    return spark.createDataFrame([("A", n)], "school_id string, n int")


def _content(store, schema, partition=PARTITION):
    return sorted(tuple(r) for r in store.read(schema, *partition).drop("academic_year", "key_stage", "data_stage").collect())


# ------------------------------------------------------------------------- locks


def test_second_run_of_a_partition_is_refused_naming_the_first(tmp_path):
    with PartitionLock(tmp_path, *PARTITION, run_id="first"):
        with pytest.raises(PartitionLockedError, match=r"2024-ks2-unvalidated is being released by run first .*process"):
            PartitionLock(tmp_path, *PARTITION, run_id="second").acquire()
        # Another data stage or year is another partition: allowed at the same time.
        with PartitionLock(tmp_path, 2024, "ks2", "validated", run_id="third"):
            pass
    with PartitionLock(tmp_path, *PARTITION, run_id="second"):  # free again once the first ends
        pass
    assert not any((tmp_path / "_locks").iterdir())


def _dead_holder(lock: PartitionLock) -> None:
    """Leave lock's file as a run killed on this machine leaves it."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    holder = {"run_id": "killed", "pid": dead.pid, "host": os.uname().nodename, "started_at": "2026-01-01T00:00:00+00:00"}
    lock.path.parent.mkdir(parents=True, exist_ok=True)
    lock.path.write_text(json.dumps(holder))


def test_lock_of_a_dead_process_on_this_machine_is_taken_over(tmp_path, caplog):
    _dead_holder(PartitionLock(tmp_path, *PARTITION, run_id="killed"))
    with PartitionLock(tmp_path, *PARTITION, run_id="next") as taken:
        assert json.loads(taken.path.read_text())["run_id"] == "next"
    assert "no longer running" in caplog.text


def test_two_runs_finding_the_same_stale_lock_do_not_both_take_it(tmp_path, monkeypatch):
    first = PartitionLock(tmp_path, *PARTITION, run_id="first")
    late = PartitionLock(tmp_path, *PARTITION, run_id="late")
    _dead_holder(first)

    def stale_and_meanwhile_first_takes_over(holder):
        # `late` has read the dead run's lock; before it acts, `first` takes that lock over.
        found = PartitionLock._stale(holder)
        first.acquire()
        return found

    monkeypatch.setattr(late, "_stale", stale_and_meanwhile_first_takes_over)
    with pytest.raises(PartitionLockedError, match="by run first "):
        late.acquire()
    assert first.held and json.loads(first.path.read_text())["run_id"] == "first"
    first.release()
    assert not any((tmp_path / "_locks").iterdir())


@pytest.mark.parametrize("links_and_renames", [True, False], ids=["local file system", "no hard links or renames"])
def test_locks_work_with_and_without_hard_links_and_renames(tmp_path, monkeypatch, links_and_renames):
    if not links_and_renames:  # as on some cloud-storage mounts
        def not_permitted(*_):
            raise PermissionError("Operation not permitted")
        monkeypatch.setattr(os, "link", not_permitted)
        monkeypatch.setattr(os, "rename", not_permitted)
    with PartitionLock(tmp_path, *PARTITION, run_id="first") as first:
        assert json.loads(first.path.read_text())["run_id"] == "first"
        with pytest.raises(PartitionLockedError, match="by run first "):
            PartitionLock(tmp_path, *PARTITION, run_id="second").acquire()
    _dead_holder(first)
    with PartitionLock(tmp_path, *PARTITION, run_id="next") as taken:
        assert json.loads(taken.path.read_text())["run_id"] == "next"
    assert not any((tmp_path / "_locks").iterdir())


@pytest.mark.parametrize("content", ["", "{not json", "{}"], ids=["empty", "unreadable", "no run"])
def test_a_lock_that_names_no_run_is_reported_as_such_and_left_alone(tmp_path, content):
    """A lock left empty (a crash of an older version mid-write) or made by hand names no
    holder: the run is refused with a message that says so, and the lock is not touched."""
    lock = PartitionLock(tmp_path, *PARTITION, run_id="next")
    lock.path.parent.mkdir(parents=True)
    lock.path.write_text(content)
    with pytest.raises(PartitionLockedError, match=r"2024-ks2-unvalidated is locked by .*names no run .*delete it and run again"):
        lock.acquire()
    assert lock.path.read_text() == content and not lock.held


def test_release_of_a_busy_partition_exits_with_code_4(tmp_path):
    with PartitionLock(tmp_path / "out", 2024, "ks2", "unvalidated", run_id="holder"):
        code = main(["release", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--year", "2024",
                     "--key-stage", "ks2", "--stage", "unvalidated"])
    assert code == EXIT_BUSY


# ------------------------------------------------------------------- all or none


def test_failed_publication_puts_every_table_back(spark, tmp_path, monkeypatch):
    store = TableStore(spark, tmp_path)
    publish(store, [store.stage_partition(_scores(spark, 1.0), SCORES, *PARTITION),
                    store.stage_partition(_counts(spark, 10), COUNTS, *PARTITION)], "before")
    before = (_content(store, SCORES), _content(store, COUNTS))

    staged = [store.stage_partition(_scores(spark, 5.0), SCORES, *PARTITION), store.stage_partition(_counts(spark, 50), COUNTS, *PARTITION)]
    original = store.commit

    def fail_on_counts(item):
        if item.schema.name == "counts":
            raise OSError("disk full")
        return original(item)

    monkeypatch.setattr(store, "commit", fail_on_counts)
    with pytest.raises(OSError, match="disk full"):
        publish(store, staged, "failing")
    assert (_content(store, SCORES), _content(store, COUNTS)) == before
    assert not journal_path(tmp_path, PARTITION).exists()


def test_the_write_stage_stages_tables_in_threads_under_its_job_group_and_publishes_none_if_one_fails(spark, tmp_path, monkeypatch):
    from valueadded.config import load_release_config
    from valueadded.io.delta_store import SchemaMismatchError
    from valueadded.io.runlog import RunRecord
    from valueadded.pipeline import STAGING_THREADS, Release, stage_write

    assert STAGING_THREADS > 1
    record = RunRecord(run_id="r", command="", year=2024, key_stage="ks2", data_stage="unvalidated", config_json="{}",
                       pseudonym_key_fingerprint="none")
    release = Release(spark, load_release_config(), tmp_path, tmp_path, *PARTITION, record)
    release.publish(SCORES, _scores(spark, 1.0))
    release.publish(COUNTS, _counts(spark, 10))
    tracker = spark.sparkContext.statusTracker()
    spark.sparkContext.setJobGroup("write-stage-test", "the write stage")
    try:
        stage_write(release)
        # Every Spark job of the staging threads ran in the stage's job group (Spark's UI, cancellation).
        assert len(tracker.getJobIdsForGroup("write-stage-test")) >= 2
    finally:
        spark.sparkContext.setJobGroup("", "")
    store = TableStore(spark, tmp_path)
    before = (_content(store, SCORES), _content(store, COUNTS))
    assert before == ([("A", 1.0), ("B", 2.0)], [("A", 10)])
    assert release.record.table_versions == {"scores": 0, "counts": 0}

    release.outputs.clear()
    release.publish(SCORES, _scores(spark, 5.0))
    release.publish(COUNTS, _counts(spark, 50).withColumn("n", F.col("n").cast("double")))
    discarded = []
    monkeypatch.setattr(TableStore, "discard", lambda store, item: discarded.append(item.schema.name))
    with pytest.raises(SchemaMismatchError, match="n is double, declared int"):
        stage_write(release)
    assert (_content(store, SCORES), _content(store, COUNTS)) == before  # the table staged without fault is not published
    assert discarded == ["scores"]  # and what it staged is discarded


def test_the_lock_is_released_even_when_the_run_log_write_is_interrupted(spark, tmp_path, monkeypatch):
    """A second interrupt while a failed run writes its run log row: the process lives on
    (a notebook, a shared driver), so a lock left behind would refuse every later run."""
    from valueadded import pipeline
    from valueadded.config import load_release_config
    from valueadded.io.pseudonym import PseudonymKey

    def failing_stage(release):
        raise RuntimeError("stage failed")

    def interrupted(*args):
        raise KeyboardInterrupt()

    monkeypatch.setattr(pipeline, "stages_for", lambda key_stage: [("failing", failing_stage)])
    monkeypatch.setattr(TableStore, "append", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_release(spark, load_release_config(), tmp_path / "in", tmp_path / "out", *PARTITION,
                             pseudonym_key=PseudonymKey("test", b"k" * 32))
    assert not any((tmp_path / "out" / "_locks").iterdir())
    with PartitionLock(tmp_path / "out", *PARTITION, run_id="next"):  # the partition is free
        pass


def test_a_failed_release_frees_the_checkpoints_its_stages_made(spark, tmp_path, monkeypatch):
    """A stage that fails after materialising a frame, before handing it on to later
    stages: the run frees it, so the session's next release has the memory."""
    from valueadded import pipeline
    from valueadded.config import load_release_config
    from valueadded.io.pseudonym import PseudonymKey
    from valueadded.spark import materialise, persisted_rdds

    made = {}

    def failing_after_a_checkpoint(release):
        made["checkpoint"] = materialise(spark.range(100).withColumn("twice", F.col("id") * 2))
        raise RuntimeError("stage failed")

    monkeypatch.setattr(pipeline, "stages_for", lambda key_stage: [("failing", failing_after_a_checkpoint)])
    before = persisted_rdds(spark)
    with pytest.raises(RuntimeError, match="stage failed"):
        pipeline.run_release(spark, load_release_config(), tmp_path / "in", tmp_path / "out", *PARTITION,
                             pseudonym_key=PseudonymKey("test", b"k" * 32))
    assert made["checkpoint"] is not None  # still referred to here, so Spark's cleaner would not free it
    assert persisted_rdds(spark) == before


@pytest.mark.parametrize("callers_group", [None, "notebook"], ids=["no job group", "a notebook's job group"])
def test_a_release_puts_the_callers_job_group_back(spark, tmp_path, monkeypatch, callers_group):
    """Jobs a notebook runs after a release are not shown under the release's run log."""
    from valueadded import pipeline
    from valueadded.config import load_release_config
    from valueadded.io.pseudonym import PseudonymKey

    context = spark.sparkContext
    for key in pipeline.JOB_GROUP_PROPERTIES:  # whatever earlier tests left on this thread
        context.setLocalProperty(key, None)
    if callers_group:
        context.setJobGroup(callers_group, "the analyst's own queries")
    monkeypatch.setattr(pipeline, "stages_for", lambda key_stage: [("nothing", lambda release: None)])
    try:
        pipeline.run_release(spark, load_release_config(), tmp_path / "in", tmp_path / "out", *PARTITION,
                             pseudonym_key=PseudonymKey("test", b"k" * 32))
        assert context.getLocalProperty("spark.jobGroup.id") == callers_group
        assert context.getLocalProperty("spark.job.description") == ("the analyst's own queries" if callers_group else None)
    finally:
        for key in pipeline.JOB_GROUP_PROPERTIES:
            context.setLocalProperty(key, None)


def test_tables_staged_at_once_each_run_with_their_own_copy_of_the_spark_local_properties(spark, tmp_path, monkeypatch):
    """Spark keeps a running query's execution id in the thread's local properties: two
    staging threads sharing one copy overwrote each other's mid-query."""
    import threading

    from valueadded.config import load_release_config
    from valueadded.io.runlog import RunRecord
    from valueadded.pipeline import Release, stage_write

    both_running = threading.Barrier(2, timeout=60)
    seen = []
    original = TableStore.stage_partition

    def recording(store, frame, schema, *partition):
        properties = spark.sparkContext._jsc.sc().getLocalProperties()  # noqa: SLF001
        seen.append((spark._jvm.java.lang.System.identityHashCode(properties), properties.getProperty("spark.jobGroup.id")))  # noqa: SLF001
        both_running.wait()  # the two tables are staged at the same time
        return original(store, frame, schema, *partition)

    monkeypatch.setattr(TableStore, "stage_partition", recording)
    record = RunRecord(run_id="r", command="", year=2024, key_stage="ks2", data_stage="unvalidated", config_json="{}",
                       pseudonym_key_fingerprint="none")
    release = Release(spark, load_release_config(), tmp_path, tmp_path, *PARTITION, record)
    release.publish(SCORES, _scores(spark, 1.0))
    release.publish(COUNTS, _counts(spark, 10))
    spark.sparkContext.setJobGroup("own-properties-test", "the write stage")
    try:
        stage_write(release)
    finally:
        spark.sparkContext.setJobGroup("", "")
    assert [group for _, group in seen] == ["own-properties-test"] * 2
    assert len({identity for identity, _ in seen}) == 2


def test_publication_killed_between_commits_is_put_back_by_the_next_run(spark, tmp_path, monkeypatch):
    store = TableStore(spark, tmp_path)
    publish(store, [store.stage_partition(_scores(spark, 1.0), SCORES, *PARTITION),
                    store.stage_partition(_counts(spark, 10), COUNTS, *PARTITION)], "before")
    before = (_content(store, SCORES), _content(store, COUNTS))
    staged = [store.stage_partition(_scores(spark, 5.0), SCORES, *PARTITION), store.stage_partition(_counts(spark, 50), COUNTS, *PARTITION)]
    original = store.commit

    class Killed(BaseException):
        pass

    def killed_on_counts(item):
        if item.schema.name == "counts":
            raise Killed()
        return original(item)

    # A killed process runs no clean-up: no put-back after the first commit.
    monkeypatch.setattr(store, "commit", killed_on_counts)
    monkeypatch.setattr(publishing, "recover_partition", lambda *args: [])
    with pytest.raises(Killed):
        publish(store, staged, "killed")
    assert _content(store, SCORES) != before[0]  # half published
    assert journal_path(tmp_path, PARTITION).exists()
    monkeypatch.undo()

    assert recover_partition(TableStore(spark, tmp_path), PARTITION, SCHEMAS) == ["counts", "scores"]
    assert (_content(store, SCORES), _content(store, COUNTS)) == before
    assert not journal_path(tmp_path, PARTITION).exists()


def test_putting_back_one_partition_keeps_a_concurrent_runs_partition(spark, tmp_path):
    store = TableStore(spark, tmp_path)
    other = (2024, "ks4", "unvalidated")
    publish(store, [store.stage_partition(_scores(spark, 1.0), SCORES, *PARTITION)], "a")
    version = store.version(SCORES)
    publish(store, [store.stage_partition(_scores(spark, 2.0), SCORES, *PARTITION)], "b")
    publish(store, [store.stage_partition(_scores(spark, 9.0), SCORES, *other)], "concurrent")
    store.restore_partition(SCORES, PARTITION, version)
    assert _content(store, SCORES) == [("A", 1.0), ("B", 2.0)]
    assert _content(store, SCORES, other) == [("A", 9.0), ("B", 10.0)]
    store.restore_partition(SCORES, PARTITION, None)  # before the table existed: empty
    assert _content(store, SCORES) == [] and _content(store, SCORES, other) == [("A", 9.0), ("B", 10.0)]


# ----------------------------------------------------------- a real killed process


def _versions(output):
    versions = {}
    for schema in OUTPUT_TABLES.values():
        path = output / schema.audience / schema.name
        if path.is_dir():
            from deltalake import DeltaTable

            versions[schema.name] = DeltaTable(str(path)).version()
    return versions


@pytest.mark.slow
def test_release_killed_with_a_signal_leaves_every_table_as_it_was(generated_release, spark, tmp_path):
    """A separate `valueadded release` process, killed with SIGKILL while it writes,
    changes no published table; the next run takes over its lock and publishes."""
    output = tmp_path / "output"
    shutil.copytree(generated_release.output_dir, output)
    before = _versions(output)
    store = TableStore(spark, output)
    pupils_before = store.read(OUTPUT_TABLES["pupil_results"], 2024, "ks2", "unvalidated").count()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    process = subprocess.Popen(
        [sys.executable, "-m", "valueadded.cli", "release", "--input", str(generated_release.input_dir), "--output", str(output),
         "--year", "2024", "--key-stage", "ks2", "--stage", "unvalidated"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 600
    # Wait until it is writing table files, then kill the whole process group (driver and JVM).
    while not list(output.glob("*/*/_staging-*")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the release finished before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert _versions(output) == before
    assert store.read(OUTPUT_TABLES["pupil_results"], 2024, "ks2", "unvalidated").count() == pupils_before
    assert (output / "_locks" / "2024-ks2-unvalidated.lock").exists()  # left by the killed run

    code = main(["release", "--input", str(generated_release.input_dir), "--output", str(output), "--year", "2024",
                 "--key-stage", "ks2", "--stage", "unvalidated"])
    assert code == 0
    assert all(_versions(output)[name] > version for name, version in before.items() if name != "runs")
    assert not (output / "_locks" / "2024-ks2-unvalidated.lock").exists()


def test_runs_of_different_partitions_publish_at_the_same_time(spark, tmp_path):
    """Two releases of other partitions commit to the same tables concurrently: Delta's
    optimistic commits retry, and both end up published."""
    import threading

    store = TableStore(spark, tmp_path)
    partitions = [(2024, "ks2", "unvalidated"), (2024, "ks2", "validated"), (2023, "ks4", "validated")]
    rounds = 5
    staged = {
        p: [[store.stage_partition(_scores(spark, float(i)), SCORES, *p), store.stage_partition(_counts(spark, i), COUNTS, *p)]
            for i in range(rounds)]
        for p in partitions
    }
    errors = []

    def release(partition):
        try:
            for i in range(rounds):
                with PartitionLock(tmp_path, *partition, run_id=f"{partition}-{i}"):
                    publish(store, staged[partition][i], f"{partition}-{i}")
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=release, args=(p,)) for p in partitions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for partition in partitions:
        assert _content(store, SCORES, partition) == [("A", float(rounds - 1)), ("B", float(rounds))]
        assert _content(store, COUNTS, partition) == [("A", rounds - 1)]
    assert store.version(SCORES) == len(partitions) * rounds - 1
