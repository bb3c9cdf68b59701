"""A release is an ordered list of stages; this module runs them.

Each stage is a function of the `Release` context: it reads what earlier stages left in
`release.frames`, adds its own frames, and registers output tables in
`release.outputs`. The runner times every stage, logs one JSON line per stage, checks
the reconciliation of pupils in and out, writes the outputs, and appends the run to the
`runs` table whether the run succeeded or failed.

A new measure is a new module with a stage function, added to `MEASURE_STAGES` for its
key stage: nothing else changes.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.util import inheritable_thread_target

from valueadded.config import ConfigError, ReleaseConfig
from valueadded.cva.stage import stage_cva
from valueadded.io.delta_store import SchemaMismatchError, TableStore
from valueadded.io.intake import Intake, check_rejected_share, run_intake
from valueadded.io.pseudonym import PseudonymKey, carried_pseudonyms, with_pupil_pseudonyms
from valueadded.io.runlog import RunRecord
from valueadded.io.publish import PartitionLock, publish, recover_partition
from valueadded.io.schemas import OUTPUT_TABLES, PUPIL_RESULTS, REJECTED_ROWS, RUNS, TableSchema
from valueadded.measures import ks2, ks4
from valueadded.measures.cohort import build_pupil_table
from valueadded.rollup.stage import stage_rollup
from valueadded.spark import free, free_persisted_since, materialise, persisted_rdds

log = logging.getLogger(__name__)

KEY_STAGES = ("ks2", "ks4")
DATA_STAGES = ("unvalidated", "validated")
# The thread-local properties SparkContext.setJobGroup sets: a release sets its own and
# puts the caller's back when it ends.
JOB_GROUP_PROPERTIES = ("spark.jobGroup.id", "spark.job.description", "spark.job.interruptOnCancel")


class ReconciliationError(RuntimeError):
    """Rows in do not equal rows included + excluded + rejected: a defect, never data."""


class OutputSchemaError(ConfigError):
    """The output folder holds a table written with an older schema than this code's."""


@dataclass
class Release:
    """Everything one run knows: its partition, inputs, intermediate frames and outputs."""

    spark: SparkSession
    config: ReleaseConfig
    input_dir: Path
    output_dir: Path
    year: int
    key_stage: str
    data_stage: str
    record: RunRecord
    # None only where nothing is written (pupil_table): a store without a key refuses to
    # write a table that holds pupil ids.
    pseudonym_key: PseudonymKey | None = None
    intake: Intake | None = None
    frames: dict[str, DataFrame] = field(default_factory=dict)
    outputs: dict[str, tuple[TableSchema, DataFrame]] = field(default_factory=dict)

    def publish(self, schema: TableSchema, frame: DataFrame) -> None:
        """Register a frame to be written as this run's partition of `schema`."""
        self.outputs[schema.name] = (schema, frame)


Stage = tuple[str, Callable[[Release], None]]


def stage_intake(release: Release) -> None:
    intake = run_intake(
        release.spark, release.input_dir, release.year, release.key_stage, release.data_stage, release.config.codes
    )
    release.intake = intake
    release.record.input_fingerprints = intake.fingerprints
    release.record.row_counts["inputs"] = intake.counts
    release.publish(REJECTED_ROWS, intake.rejected)
    check_rejected_share(intake.counts, release.config.max_rejected_share)


def stage_pupil_table(release: Release) -> None:
    intake = release.intake
    pupils = build_pupil_table(
        intake.pupils, intake.schools, intake.trust_membership, intake.amendments,
        release.year, release.key_stage, release.data_stage,
    )
    if release.pseudonym_key is not None:
        # Each pupil hashed once; the pupil tables carry the column to the write.
        pupils = with_pupil_pseudonyms(pupils, release.pseudonym_key)
    pupils = materialise(pupils)
    intake.free_pupil_rows()
    release.frames["pupils"] = pupils
    release.publish(PUPIL_RESULTS, pupils.select(*PUPIL_RESULTS.names, *carried_pseudonyms(pupils)))


def pupil_table(
    spark: SparkSession, config: ReleaseConfig, input_dir: Path, year: int, key_stage: str, data_stage: str
) -> DataFrame:
    """The pupil table a release of these inputs builds, before the measures: intake (row
    rules) and the pupils with `included` and `exclusion_reason` (what the CVA models are
    fitted to). Writes nothing; for notebooks trying a model variant on a release's inputs."""
    record = RunRecord(run_id="pupil-table", command="", year=year, key_stage=key_stage, data_stage=data_stage,
                       config_json=config.to_json(), pseudonym_key_fingerprint="none: writes nothing")
    release = Release(spark, config, Path(input_dir), Path("."), year, key_stage, data_stage, record)
    stage_intake(release)
    stage_pupil_table(release)
    return release.frames["pupils"]


def stage_reconcile(release: Release) -> None:
    """Check rows in = included + excluded + rejected for pupils and results rows."""
    counts = release.record.row_counts["inputs"]
    pupils = release.frames["pupils"]
    by_reason = {
        (row["exclusion_reason"] or "included"): row["n"]
        for row in pupils.groupBy("exclusion_reason").agg(F.count(F.lit(1)).alias("n")).collect()
    }
    in_table = sum(by_reason.values())
    results_name = f"{release.key_stage}_results"
    checks = {
        "pupils": (counts["pupils"]["rows_in_scope"], in_table + counts["pupils"]["rows_rejected"]),
        results_name: (counts[results_name]["rows_in_scope"], in_table + counts[results_name]["rows_rejected"]),
    }
    release.record.row_counts["pupil_results"] = {
        "rows": in_table,
        "included": by_reason.get("included", 0),
        "excluded": in_table - by_reason.get("included", 0),
        "by_reason": dict(sorted(by_reason.items())),
    }
    release.record.row_counts["reconciliation"] = {
        name: {"rows_in": rows_in, "included_excluded_rejected": out, "holds": rows_in == out}
        for name, (rows_in, out) in checks.items()
    }
    broken = {name: pair for name, pair in checks.items() if pair[0] != pair[1]}
    if broken:
        raise ReconciliationError(f"rows in != included + excluded + rejected: {broken}")
    release.record.row_counts["amendments"] = amendment_counts(release, pupils)


def amendment_counts(release: Release, pupils: DataFrame) -> dict:
    """What the checking exercise's amendments did in this run, for the run log.

    `accepted`: the accepted amendments per action (corrections per results column) and
    how many of them name a pupil in this run's pupil table. `rows_changed`: pupils taken
    out as removed_at_checking and results rows corrected (validated stage only), and
    pupils held back as added_at_checking (unvalidated stage only: they count once
    validated).
    """
    kind = F.when(F.col("action") == "correct", F.concat(F.lit("correct "), F.col("field"))).otherwise(F.col("action"))
    in_table = F.broadcast(release.intake.amendments.select("pupil_id").distinct()).join(
        pupils.select("pupil_id"), on="pupil_id", how="left_semi"
    ).withColumn("_in_table", F.lit(True))
    accepted = {
        row["kind"]: {"amendments": row["n"], "pupils_in_table": row["in_table"]}
        for row in release.intake.amendments.withColumn("kind", kind)
        .join(in_table, on="pupil_id", how="left")
        .groupBy("kind")
        .agg(F.count(F.lit(1)).alias("n"), F.count("_in_table").alias("in_table"))
        .collect()
    }
    by_reason = release.record.row_counts["pupil_results"]["by_reason"]
    corrected = pupils.where(F.col("amended")).count() if release.data_stage == "validated" else 0
    return {
        "applied": release.data_stage == "validated",
        "accepted": dict(sorted(accepted.items())),
        "rows_changed": {
            "removed_at_checking": by_reason.get("removed_at_checking", 0),
            "added_at_checking_held_back": by_reason.get("added_at_checking", 0),
            "results_corrected": corrected,
        },
    }


# Tables staged at once by the write stage. While one table's job runs, the other's
# driver work (planning, moving files, reading footers) proceeds, and a small table's
# one-task job does not leave a core idle. National KS2 validated, warm: write stage
# 13.0-14.4 s one at a time, 11.8-13.5 s two at a time (three pairs of runs, one session).
STAGING_THREADS = 2


def _with_own_properties(spark: SparkSession, task: Callable) -> Callable:
    """`task`, to run in a pool thread under a copy of this thread's Spark local properties
    (the release stage's job group: Spark's UI and cancellation).

    Wrap once per task, never once per pool: `inheritable_thread_target` copies the
    properties when it wraps, and every thread that calls one wrapper runs with that same
    `java.util.Properties`. Spark keeps the running query's execution ids there
    (`spark.sql.execution.id`, `spark.sql.execution.root.id`), and a query's start checks
    the root id is set and then reads it back: with one copy for two tables, the other
    table's query ending in between cleared it, and a national release failed in its
    write stage with `NumberFormatException: Cannot parse null string`.
    """
    return inheritable_thread_target(spark)(task)


def stage_write(release: Release) -> None:
    """Stage every output table's partition, then publish them all together (io/publish.py).

    Tables are staged STAGING_THREADS at a time; a failure stops the staging of tables not
    yet started, nothing is published (staged files are never referenced), and what the
    other tables staged is discarded (`TableStore.discard`).
    """
    store = TableStore(release.spark, release.output_dir, pseudonym_key=release.pseudonym_key)
    with ThreadPoolExecutor(max_workers=STAGING_THREADS, thread_name_prefix="stage-table") as pool:
        pending = [
            pool.submit(_with_own_properties(release.spark, store.stage_partition),
                        frame, schema, release.year, release.key_stage, release.data_stage)
            for schema, frame in release.outputs.values()
        ]
        try:
            staged = [future.result() for future in pending]
        except BaseException:
            pool.shutdown(cancel_futures=True)  # the tables not started yet; waits for the others
            for future in pending:
                if not future.cancelled() and future.exception() is None:  # all done after shutdown
                    store.discard(future.result())
            raise
    release.record.table_versions.update(publish(store, staged, release.record.run_id))


# Measures register their stages here, per key stage, in the order they run.
MEASURE_STAGES: dict[str, list[Stage]] = {"ks2": [("ks2_measures", ks2.stage_measures)], "ks4": [("ks4_measures", ks4.stage_measures)]}


def stages_for(key_stage: str) -> list[Stage]:
    return [
        ("intake", stage_intake),
        ("pupil_table", stage_pupil_table),
        ("reconcile", stage_reconcile),
        *MEASURE_STAGES[key_stage],
        ("cva", stage_cva),
        ("rollup", stage_rollup),
        ("write", stage_write),
    ]


def check_output_schemas(store: TableStore) -> None:
    """Stop before any work when an existing output table has another schema than the code's.

    Such a table cannot be written (nor the run logged) by this version: the run would
    fail at the end, or its run log row would be lost.
    """
    problems = []
    for schema in OUTPUT_TABLES.values():
        try:
            store.check_existing(schema)
        except SchemaMismatchError as error:
            problems.append(f"{schema.name} (this code writes v{schema.version})")
            log.debug("%s", error)
    if problems:
        raise OutputSchemaError(
            f"{store.root}: tables written by an earlier schema version: {', '.join(problems)}. Release into a new "
            "--output folder (docs/tables.md lists each table's schema version)"
        )


def run_release(
    spark: SparkSession,
    config: ReleaseConfig,
    input_dir: Path,
    output_dir: Path,
    year: int,
    key_stage: str,
    data_stage: str,
    command: str = "",
    pseudonym_key: PseudonymKey | None = None,
) -> RunRecord:
    """Run one release: every stage, then the run log. Re-raises a stage's error after logging the run.

    Args:
        pseudonym_key: the key pupil pseudonyms are computed with; by default the one in
            $VALUEADDED_PSEUDONYM_KEY (PseudonymKeyError, before any work, when unset).
    """
    if key_stage not in KEY_STAGES:
        raise ValueError(f"key stage must be one of {KEY_STAGES}, got {key_stage!r}")
    if data_stage not in DATA_STAGES:
        raise ValueError(f"data stage must be one of {DATA_STAGES}, got {data_stage!r}")
    if pseudonym_key is None:
        pseudonym_key = PseudonymKey.from_environment()
    check_output_schemas(TableStore(spark, output_dir))
    record = RunRecord(
        run_id=uuid.uuid4().hex,
        command=command,
        year=year,
        key_stage=key_stage,
        data_stage=data_stage,
        config_json=config.to_json(),
        pseudonym_key_fingerprint=pseudonym_key.fingerprint,
    )
    log.info("run %s: pupil pseudonyms keyed with %s", record.run_id, pseudonym_key)
    release = Release(spark, config, Path(input_dir), Path(output_dir), year, key_stage, data_stage, record, pseudonym_key)
    status, error = "succeeded", None
    held_before = persisted_rdds(spark)
    callers_job_group = {key: spark.sparkContext.getLocalProperty(key) for key in JOB_GROUP_PROPERTIES}
    lock = PartitionLock(Path(output_dir), year, key_stage, data_stage, record.run_id)
    try:
        lock.acquire()  # a second run of the same partition stops here (PartitionLockedError)
        recovered = recover_partition(TableStore(spark, output_dir), (int(year), key_stage, data_stage), OUTPUT_TABLES)
        if recovered:
            record.row_counts["recovered_tables"] = recovered
        for name, stage in stages_for(key_stage):
            started = time.perf_counter()
            # Spark's UI and event log show each job under the release stage that ran it.
            spark.sparkContext.setJobGroup(name, f"{key_stage} {data_stage} {name} (run {record.run_id})")
            stage(release)
            record.stage_timings[name] = time.perf_counter() - started
            log.info(json.dumps({"run_id": record.run_id, "stage": name, "seconds": round(record.stage_timings[name], 3)}))
    except BaseException as failure:  # an interrupt too: the run log must never say succeeded
        status, error = "failed", f"{type(failure).__name__}: {failure}"
        raise
    finally:
        try:
            spark.sparkContext.setJobGroup("runs", f"{key_stage} {data_stage} run log (run {record.run_id})")
            try:
                TableStore(spark, output_dir).append(record.to_arrow(status, error), RUNS)
            except Exception:  # the run's own error matters more than a failed log write
                log.exception("could not append the run to the runs table")
        finally:
            # Whatever the run log did (a dead JVM, a second interrupt): this process is
            # still alive, so a lock left here would stop every later run of the partition.
            lock.release()
            for frame in release.frames.values():
                free(frame)
            if release.intake is not None:
                release.intake.release()
            # A stage that failed after materialising a frame and before handing it on.
            leftover = free_persisted_since(spark, held_before)
            if leftover:
                log.info("freed %d checkpoint(s) the run held beyond its frames", leftover)
            # The caller's later jobs (a notebook's, the next release's) are not the run log's.
            for key, value in callers_job_group.items():
                spark.sparkContext.setLocalProperty(key, value)
    log.info(json.dumps({"run_id": record.run_id, "status": status, "row_counts": record.row_counts}))
    return record
