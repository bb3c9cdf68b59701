"""valueadded.spark.materialise and free: the same rows, a one-node plan, freed on request."""

from __future__ import annotations

from pyspark.sql import functions as F

from valueadded.spark import free, materialise


def _persistent_ids(spark) -> set[int]:
    return {int(k) for k in spark.sparkContext._jsc.getPersistentRDDs().keySet()}  # noqa: SLF001


def test_materialise_keeps_the_rows_cuts_the_plan_and_free_releases_them(spark):
    frame = spark.range(1000).repartition(9).withColumn("school_id", (F.col("id") % 7).cast("string"))
    frame = frame.groupBy("school_id").agg(F.count(F.lit(1)).alias("n")).unionByName(
        frame.groupBy("school_id").agg(F.sum("id").alias("n"))
    )
    expected = sorted(frame.collect())
    before = _persistent_ids(spark)

    kept = materialise(frame)
    plan = kept._jdf.queryExecution().analyzed()  # noqa: SLF001
    assert plan.getClass().getSimpleName() == "LogicalRDD"  # later steps never analyse the union again
    assert kept.rdd.getNumPartitions() <= spark.sparkContext.defaultParallelism
    assert sorted(kept.collect()) == expected
    held = _persistent_ids(spark) - before
    assert held  # the checkpoint's blocks

    free(kept)
    assert not (_persistent_ids(spark) & held)
    free(kept)  # freeing twice is harmless
    free(frame)  # so is freeing a frame that holds nothing
