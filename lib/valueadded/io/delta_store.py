"""Delta tables: replace one partition atomically, append run-log rows, read back.

Tables live under `<output>/<audience>/<table>`: `published/` for what dashboards read,
`restricted/` for pupil-level and operational tables. Every table is partitioned by
academic year, key stage and data stage; a release replaces exactly its own partition
in one Delta commit, so readers see the old partition or the new one, never a mix.

Two backends write the same tables:
- `delta-rs` (the `deltalake` package) in local mode, where the Delta JARs cannot be
  loaded. Spark writes the partition as Parquet on the executors into a staging
  folder; the driver then streams those files batch by batch into `write_deltalake`,
  which commits once. Driver memory is bounded by one batch, not the table.
- `delta-spark` when the Delta JARs and SQL extension are in the session (a cluster):
  Spark writes natively with `replaceWhere`.

The `deltalake` writer casts silently, so every write is checked first against the
table's declared schema (`io/schemas.py`): names, order, types and non-null columns.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.dataset as ds
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import TableNotFoundError
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from valueadded.io.schemas import PARTITION_NAMES, SPARK_TYPES, TableSchema
from valueadded.spark import delta_spark_available

log = logging.getLogger(__name__)

BATCH_ROWS = 65_536


class SchemaMismatchError(ValueError):
    """A DataFrame or an existing table does not match the declared table schema."""


def partition_predicate(year: int, key_stage: str, data_stage: str) -> str:
    for value in (key_stage, data_stage):
        if not value.replace("_", "").isalnum():
            raise ValueError(f"invalid partition value {value!r}")
    return f"academic_year = {int(year)} AND key_stage = '{key_stage}' AND data_stage = '{data_stage}'"


def check_frame_schema(frame: DataFrame, schema: TableSchema) -> None:
    """Raise SchemaMismatchError unless the frame has exactly the table's columns and types."""
    found = [(f.name, f.dataType) for f in frame.schema.fields]
    expected = [(c.name, SPARK_TYPES[c.type]) for c in schema.columns]
    if [n for n, _ in found] != [n for n, _ in expected]:
        missing = [n for n, _ in expected if n not in dict(found)]
        extra = [n for n, _ in found if n not in dict(expected)]
        raise SchemaMismatchError(
            f"{schema.name}: columns differ from schema v{schema.version}: missing {missing}, unexpected {extra}, "
            f"or a different order"
        )
    wrong = [f"{n} is {t.simpleString()}, declared {dict(expected)[n].simpleString()}" for n, t in found if t != dict(expected)[n]]
    if wrong:
        raise SchemaMismatchError(f"{schema.name}: " + "; ".join(wrong))


def _checked_batches(dataset: ds.Dataset, schema: TableSchema, failures: list[Exception]) -> Iterator[pa.RecordBatch]:
    """Yield the staged rows as batches of exactly the declared Arrow schema.

    A failed check is also put in `failures`, because the Delta writer wraps errors
    raised inside the stream in its own error type.
    """
    target = schema.arrow_schema()
    required = [c.name for c in schema.columns if not c.nullable]
    for batch in dataset.to_batches(columns=schema.names, batch_size=BATCH_ROWS):
        for name in required:
            nulls = batch.column(name).null_count
            if nulls:
                failures.append(SchemaMismatchError(f"{schema.name}: {nulls} null value(s) in non-null column {name}"))
                raise failures[-1]
        yield pa.RecordBatch.from_arrays(batch.columns, schema=target)


def _same_types(found: pa.Schema, target: pa.Schema) -> bool:
    return [(f.name, f.type) for f in found] == [(f.name, f.type) for f in target]


class TableStore:
    """The Delta tables of one output location."""

    def __init__(self, spark: SparkSession, root: str | Path, backend: str = "auto"):
        self.spark = spark
        self.root = Path(root)
        if backend == "auto":
            backend = "delta-spark" if delta_spark_available(spark) else "delta-rs"
        if backend not in ("delta-rs", "delta-spark"):
            raise ValueError(f"unknown Delta backend {backend!r}")
        self.backend = backend

    def path(self, schema: TableSchema) -> Path:
        return self.root / schema.audience / schema.name

    def version(self, schema: TableSchema) -> int | None:
        """Current Delta version of the table, or None if it does not exist yet."""
        try:
            return DeltaTable(str(self.path(schema))).version()
        except TableNotFoundError:
            return None

    def _check_existing(self, schema: TableSchema) -> None:
        try:
            existing = pa.schema(DeltaTable(str(self.path(schema))).schema().to_arrow())
        except TableNotFoundError:
            return
        target = schema.arrow_schema()
        if not _same_types(existing, target):
            raise SchemaMismatchError(
                f"{self.path(schema)}: existing table schema differs from {schema.name} v{schema.version}; "
                "a schema change needs a new table version, not an overwrite"
            )

    def replace_partition(self, frame: DataFrame, schema: TableSchema, year: int, key_stage: str, data_stage: str) -> int:
        """Replace one (year, key stage, data stage) partition of a table in one commit.

        Args:
            frame: the partition's rows with every column of `schema`; the partition
                columns may be absent, and are set here from the arguments either way.
            schema: the table's declaration.

        Returns:
            The table's Delta version after the commit.
        """
        data_columns = [name for name in schema.names if name not in PARTITION_NAMES]
        missing = [name for name in data_columns if name not in frame.columns]
        unexpected = [name for name in frame.columns if name not in data_columns and name not in PARTITION_NAMES]
        if missing or unexpected:
            raise SchemaMismatchError(f"{schema.name}: columns differ from schema v{schema.version}: missing {missing}, unexpected {unexpected}")
        keyed = frame.select(
            F.lit(int(year)).cast("int").alias("academic_year"),
            F.lit(key_stage).alias("key_stage"),
            F.lit(data_stage).alias("data_stage"),
            *[F.col(name) for name in data_columns],
        )
        check_frame_schema(keyed, schema)
        self._check_existing(schema)
        predicate = partition_predicate(year, key_stage, data_stage)
        target = self.path(schema)
        if self.backend == "delta-spark":
            (
                keyed.write.format("delta")
                .mode("overwrite")
                .option("replaceWhere", predicate)
                .partitionBy(*PARTITION_NAMES)
                .save(str(target))
            )
            return self.version(schema)
        staging = self.root / "_staging" / f"{schema.name}-{uuid.uuid4().hex}"
        try:
            keyed.write.mode("overwrite").parquet(str(staging))
            dataset = ds.dataset(str(staging), format="parquet")
            if not _same_types(pa.schema([dataset.schema.field(n) for n in schema.names]), schema.arrow_schema()):
                raise SchemaMismatchError(f"{schema.name}: staged Parquet types differ: {dataset.schema}")
            failures: list[Exception] = []
            reader = pa.RecordBatchReader.from_batches(schema.arrow_schema(), _checked_batches(dataset, schema, failures))
            exists = self.version(schema) is not None
            try:
                write_deltalake(
                    str(target),
                    reader,
                    partition_by=list(PARTITION_NAMES),
                    mode="overwrite",
                    predicate=predicate if exists else None,
                )
            except Exception:
                if failures:
                    raise failures[0] from None
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self.version(schema)

    def append(self, table: pa.Table, schema: TableSchema) -> int:
        """Append a few driver-side rows (the run log) to a table."""
        if not _same_types(table.schema, schema.arrow_schema()):
            raise SchemaMismatchError(f"{schema.name}: rows do not match the declared schema: {table.schema}")
        self._check_existing(schema)
        table = table.cast(schema.arrow_schema())
        if self.backend == "delta-spark":
            frame = self.spark.createDataFrame(table.to_pandas(), schema=schema.spark_schema())
            frame.write.format("delta").mode("append").partitionBy(*PARTITION_NAMES).save(str(self.path(schema)))
        else:
            write_deltalake(str(self.path(schema)), table, partition_by=list(PARTITION_NAMES), mode="append")
        return self.version(schema)

    def read(
        self,
        schema: TableSchema,
        year: int | None = None,
        key_stage: str | None = None,
        data_stage: str | None = None,
        version: int | None = None,
    ) -> DataFrame:
        """Read a table (optionally one partition, optionally as of a version) into Spark."""
        target = str(self.path(schema))
        filters = [(name, value) for name, value in zip(PARTITION_NAMES, (year, key_stage, data_stage)) if value is not None]
        if self.backend == "delta-spark":
            reader = self.spark.read.format("delta")
            if version is not None:
                reader = reader.option("versionAsOf", version)
            frame = reader.load(target)
        else:
            table = DeltaTable(target, version=version)
            partition_filters = [(name, "=", str(value)) for name, value in filters]
            files = table.file_uris(partition_filters=partition_filters or None)
            if not files:
                return self.spark.createDataFrame([], schema.spark_schema())
            # Data files hold the non-partition columns; Spark recovers the partition
            # values from the hive-style paths, typed by the declared schema.
            frame = self.spark.read.schema(schema.spark_schema()).option("basePath", target).parquet(*files)
        for name, value in filters:
            frame = frame.where(F.col(name) == F.lit(value))
        return frame.select(*schema.names)
