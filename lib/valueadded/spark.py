"""The one place a SparkSession is built.

Library code never creates a session: jobs and tests call `get_spark()` once and pass
the session in. On a cluster (spark-submit, Databricks) the session that already exists
is reused, with its own settings; locally a `local[2]` session is started with settings
measured to suit a 2-core machine.
"""

from __future__ import annotations

import logging
import os
import sys

from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

LOCAL_SETTINGS = {
    "spark.ui.enabled": "false",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.adaptive.enabled": "true",
    "spark.sql.ansi.enabled": "true",
    # Spark keeps the classes it generates for a query in a cache of 100 by default, and a
    # release builds about 550. With the default, every release of a session compiled them
    # again and the JIT compiled them again too. With room for them all, a later release
    # of a session (validated after unvalidated, KS4 after KS2) reuses classes that are
    # already compiled. Measured, a second national KS2 release in one session: 79 s ->
    # 67-68 s, the JIT's compile time in it 49 s -> 27 s of CPU.
    "spark.sql.codegen.cache.maxEntries": "2000",
}

# For a local session whose JVM this process starts: the JVM is the driver and the
# executor at once. (Under spark-submit the JVM is already running with the options it
# was given; deploy/spark-submit.sh passes these same ones for a local run.)
LOCAL_HEAP = "10g"
JIT_OPTIONS = "-XX:MaxNodeLimit=20000"
LOCAL_JVM_SETTINGS = {
    "spark.driver.memory": LOCAL_HEAP,
    # The throughput collector: national releases ran 8-12% faster than with the default G1.
    # The heap holds the release's checkpoints (materialise below): about 3 GiB of rows that
    # live for the whole release. The old generation gets room beyond them, so that the
    # garbage the stages leave there is rarely collected: with a 6 GiB heap (4 GiB old,
    # nearly all of it live) a warm national KS2 release paused 7.2-9.4 s for the collector,
    # 5-6 full collections of ~0.8 s each; with this heap, 4.7-6.6 s and 2 full collections.
    # The heap is fixed at its size (-Xms), or the collector keeps the old generation small;
    # the young generation is fixed at 3 GiB.
    #
    # The JIT's optimising compiler (C2) gives up on a method whose graph passes 20,000
    # nodes (the default limit is 80,000); such a method keeps the quick compiler's (C1)
    # code. Above all these are the methods Spark generates for wide rows, inlined deep:
    # a recording of a first KS2 release (JFR) put 31 of the JIT's 93 s of CPU on them, up
    # to 1.2 s per method, for code that then ran over a few hundred thousand rows. Measured on national releases, fresh sessions alternating with and without
    # it: the first release (KS2 unvalidated) 78.5, 79.8, 81.3 and 98.5 s against 83.7 to
    # 98.3 s (seven runs, mean 93.0 s), the JIT's CPU 60-75 s against 80-96 s; the later
    # releases of a session within the noise (README, Benchmark).
    "spark.driver.extraJavaOptions": f"{JIT_OPTIONS} -XX:+UseParallelGC -Xms{LOCAL_HEAP} -Xmn3g",
    # Spark's own share of the heap (storage and execution), 3.4 GiB as in a 6 GiB heap at
    # the default 0.6; the rest is the collector's room.
    "spark.memory.fraction": "0.35",
}


def get_spark(master: str | None = None, shuffle_partitions: int = 8, app_name: str = "valueadded") -> SparkSession:
    """Return the active session, or start a local one.

    Args:
        master: Spark master URL; default `local[2]` unless a session is already active.
        shuffle_partitions: `spark.sql.shuffle.partitions` for a new local session.
        app_name: application name shown by the cluster.
    """
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    # Python workers must use this interpreter, or they lack pandas and pyarrow.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    master = master or os.environ.get("VALUEADDED_SPARK_MASTER", "local[2]")
    builder = SparkSession.builder.appName(app_name).master(master)
    for key, value in LOCAL_SETTINGS.items():
        builder = builder.config(key, value)
    builder = builder.config("spark.sql.shuffle.partitions", str(shuffle_partitions))
    if master.startswith("local"):
        # spark-submit starts the JVM and gives this process its port: its options stand.
        if "PYSPARK_GATEWAY_PORT" not in os.environ:
            for key, value in LOCAL_JVM_SETTINGS.items():
                builder = builder.config(key, value)
        # Python workers on this machine import pyspark from the venv, not Spark's zips
        # (valueadded.spark_daemon: 4-6 s less CPU per national release).
        builder = builder.config("spark.python.daemon.module", "valueadded.spark_daemon")
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    log.info("started Spark %s (%s)", spark.version, spark.sparkContext.master)
    return spark


def delta_spark_available(spark: SparkSession) -> bool:
    """True when the Delta Lake JARs and SQL extension are loaded in this session."""
    extensions = spark.conf.get("spark.sql.extensions", "") or ""
    if "io.delta.sql.DeltaSparkSessionExtension" not in extensions:
        return False
    try:
        spark._jvm.java.lang.Class.forName("io.delta.tables.DeltaTable")  # noqa: SLF001
    except Exception:  # py4j raises its own error type for a missing class
        return False
    return True


def materialise(frame: DataFrame) -> DataFrame:
    """The frame computed now, its rows held by the executors and its plan cut to one node.

    A release computes each of its big frames (the accepted inputs, the pupil table, the
    long progress frame, the CVA-enriched pupils, the roll-up's pupil values and cells)
    once and reads it several times, from one partition per core (`partitions_per_core`).

    This is a local checkpoint, not `persist()`. Spark's columnar cache encodes and
    compresses every column as it stores the rows: 3.0-4.6 s for the national KS2 pupil
    table (660,775 rows, 52 columns) against 0.8 s for a local checkpoint, measured on 2
    cores; each later pass reads either in 0.1-0.4 s.
    The cut plan also keeps the analysis of every later step small: the pupil table's
    full plan is thousands of lines, and Spark would analyse it again for each step.

    The rows stay in the executors' block stores (memory, spilling to disk) until
    `free(frame)`. Unlike a cached frame they cannot be recomputed: on a cluster, losing
    an executor fails the run, which then leaves every table as it was (nothing is
    published before the write stage's commit).
    """
    return frame.coalesce(partitions_per_core(frame)).localCheckpoint(eager=True)


def partitions_per_core(frame: DataFrame) -> int:
    """One partition per core of the session (coalesce never adds partitions).

    Every task costs a fixed overhead, the more so with a Python function in it (the
    pupil pseudonym): writing the national pupil_results from 40 partitions measured
    6.7 s, from 2 partitions 3.4 s on 2 cores. Unions of many branches (one per subject,
    measure or level) multiply partitions, so the big frames are brought back to one per
    core where they are materialised and written.
    """
    return max(1, frame.sparkSession.sparkContext.defaultParallelism)


def free(frame: DataFrame) -> None:
    """Release what `persist()` or `materialise()` holds for the frame (nothing else)."""
    frame.unpersist()
    plan = frame._jdf.queryExecution().analyzed()  # noqa: SLF001
    if plan.getClass().getSimpleName() == "LogicalRDD":
        rdd = plan.rdd()
        # Spark's cleaner may have freed it already (nothing referred to it any more).
        if frame.sparkSession.sparkContext._jsc.getPersistentRDDs().containsKey(rdd.id()):  # noqa: SLF001
            rdd.unpersist(True)


def persisted_rdds(spark: SparkSession) -> set[int]:
    """Ids of the RDDs whose blocks the session holds now (checkpoints and caches)."""
    return {int(key) for key in spark.sparkContext._jsc.getPersistentRDDs().keySet()}  # noqa: SLF001


def free_persisted_since(spark: SparkSession, before: set[int]) -> int:
    """Release every RDD held now that was not held in `before`; return how many.

    For a release's failure path: a stage that fails between materialising a frame and
    handing it on leaves a checkpoint nothing frees by name. (Spark's cleaner would free
    it once the JVM collects it; in a long-lived session that can be much later.)
    """
    held = spark.sparkContext._jsc.getPersistentRDDs()  # noqa: SLF001
    new = [key for key in held.keySet() if int(key) not in before]
    for key in new:
        rdd = held.get(key)
        if rdd is not None:
            rdd.unpersist(True)
    return len(new)
