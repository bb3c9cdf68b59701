"""valueadded.spark: materialise and free (the same rows, a one-node plan, freed on request) and the local session's settings."""

from __future__ import annotations

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

import valueadded.spark as spark_module
from valueadded.spark import LOCAL_JVM_SETTINGS, free, materialise, persisted_rdds


def test_materialise_keeps_the_rows_cuts_the_plan_and_free_releases_them(spark):
    frame = spark.range(1000).repartition(9).withColumn("school_id", (F.col("id") % 7).cast("string"))
    frame = frame.groupBy("school_id").agg(F.count(F.lit(1)).alias("n")).unionByName(
        frame.groupBy("school_id").agg(F.sum("id").alias("n"))
    )
    expected = sorted(frame.collect())
    before = persisted_rdds(spark)

    kept = materialise(frame)
    plan = kept._jdf.queryExecution().analyzed()  # noqa: SLF001
    assert plan.getClass().getSimpleName() == "LogicalRDD"  # later steps never analyse the union again
    assert kept.rdd.getNumPartitions() <= spark.sparkContext.defaultParallelism
    assert sorted(kept.collect()) == expected
    held = persisted_rdds(spark) - before
    assert held  # the checkpoint's blocks

    free(kept)
    assert not (persisted_rdds(spark) & held)
    free(kept)  # freeing twice is harmless
    free(frame)  # so is freeing a frame that holds nothing


def test_python_workers_of_a_local_session_import_pyspark_from_the_package_not_sparks_zips(spark):
    """valueadded.spark_daemon: no task re-reads pyspark.zip's directory (4-6 s of CPU per national release)."""
    import pyspark
    from pyspark.sql import types as T

    from valueadded.spark_daemon import is_spark_archive

    @F.udf(T.ArrayType(T.StringType()))
    def worker_path():
        import sys

        import pyspark as worker_pyspark

        return [worker_pyspark.__file__, *sys.path]

    assert spark.conf.get("spark.python.daemon.module") == "valueadded.spark_daemon"
    found = spark.range(1).select(worker_path().alias("path")).first()["path"]
    assert found[0] == pyspark.__file__
    assert not [entry for entry in found[1:] if is_spark_archive(entry)]


def test_spark_archives_leave_the_path_only_when_the_packages_are_installed(tmp_path):
    from valueadded.spark_daemon import is_spark_archive, without_spark_archives

    lib = "/opt/spark/python/lib"
    archives = [f"{lib}/pyspark.zip", f"{lib}/py4j-0.10.9.9-src.zip"]
    assert [is_spark_archive(entry) for entry in [*archives, f"{lib}/other.zip", "/srv/py4j-notes-src"]] == [True, True, False, False]
    installed = tmp_path / "site-packages"
    for package in ("pyspark", "py4j"):
        (installed / package).mkdir(parents=True)
        (installed / package / "__init__.py").write_text("")
    assert without_spark_archives([*archives, str(installed), "/srv/app"]) == [str(installed), "/srv/app"]
    # A Spark distribution whose workers have pyspark only from the zip keeps it.
    only_zips = [*archives, str(tmp_path / "empty")]
    assert without_spark_archives(only_zips) == only_zips


def test_a_local_session_keeps_every_generated_class_of_a_release(spark):
    """A release generates about 550 classes: the session's cache must hold them for the next release to reuse."""
    assert int(spark.conf.get("spark.sql.codegen.cache.maxEntries")) >= 1000


def test_a_local_session_this_process_starts_gets_the_local_heap(monkeypatch):
    """get_spark's builder gets LOCAL_JVM_SETTINGS for a local master it starts, and not
    under spark-submit (PYSPARK_GATEWAY_PORT set: the JVM is already running) or for a
    cluster master."""
    class Builder:
        def __init__(self):
            self.settings = {}

        def appName(self, name):  # noqa: N802 (pyspark's name)
            return self

        def master(self, master):
            self.settings["master"] = master
            return self

        def config(self, key, value):
            self.settings[key] = value
            return self

        def getOrCreate(self):  # noqa: N802
            raise RuntimeError("built")

    def settings_for(master: str) -> dict:
        builder = Builder()
        monkeypatch.setattr(SparkSession, "builder", builder)
        monkeypatch.setattr(SparkSession, "getActiveSession", staticmethod(lambda: None))
        with pytest.raises(RuntimeError, match="built"):
            spark_module.get_spark(master)
        return builder.settings

    jvm_keys = set(LOCAL_JVM_SETTINGS)
    monkeypatch.delenv("PYSPARK_GATEWAY_PORT", raising=False)
    local = settings_for("local[2]")
    assert {key: local[key] for key in jvm_keys} == LOCAL_JVM_SETTINGS
    assert not jvm_keys & set(settings_for("yarn"))
    monkeypatch.setenv("PYSPARK_GATEWAY_PORT", "12345")
    assert not jvm_keys & set(settings_for("local[2]"))
