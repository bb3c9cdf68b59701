"""Delta tables: replace one partition atomically, append run-log rows, read back.

Tables live under `<output>/<audience>/<table>`: `published/` for what dashboards read,
`restricted/` for pupil-level and operational tables. Every table is partitioned by
academic year, key stage and data stage; a release replaces exactly its own partition
in one Delta commit, so readers see the old partition or the new one, never a mix.

Two backends write the same tables:
- `delta-rs` (the `deltalake` package) in local mode, where the Delta JARs cannot be
  loaded. Spark writes the partition's Parquet files on the executors, in place in the
  table's folder; the driver checks their footers against the declared schema and
  commits them with delta-rs in one transaction that also removes the partition's old
  files. The data is written once and never passes through the driver.
- `delta-spark` when the Delta JARs and SQL extension are in the session (a cluster):
  the partition is staged as Parquet in `<output>/<audience>/_staging-<table>-<token>/`,
  and the commit copies it into the table natively with `replaceWhere`. A staged
  partition that is not committed is removed (`discard`).

Each write stages in a folder of its own, named `_staging-...` beside the tables or in
the table's folder (Delta ignores folders whose names start with `_`), and removes only
that folder: runs of other partitions staging at the same time share no folder, so
neither can remove one the other is writing into.

The `deltalake` writer casts silently, so every write is checked first against the
table's declared schema (`io/schemas.py`): names, order, types and non-null columns.

Pupil identifiers never reach a table: the columns the schema marks as holding one are
replaced by pseudonyms as the partition is written (`io/pseudonym.py`), with the store's
pseudonym key, or taken from the pseudonyms the frame carries when they were computed
with that key; a store without a key refuses to write such a table.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable, write_deltalake
from deltalake import Schema as DeltaSchema
from deltalake.transaction import AddAction, create_table_with_add_actions
from deltalake.exceptions import DeltaError, TableNotFoundError
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from valueadded.io.pseudonym import PseudonymKey, carried_column, carried_pseudonyms, pseudonymise
from valueadded.io.schemas import PARTITION_NAMES, SPARK_TYPES, TableSchema
from valueadded.spark import delta_spark_available, partitions_per_core

log = logging.getLogger(__name__)

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


def _null_counts(path: Path, meta: pq.FileMetaData, columns: list[str]) -> dict[str, int]:
    """Nulls per column of one Parquet file: from its footer statistics, or by reading the
    column when a row group has none."""
    counts = {}
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    for name in columns:
        index = names.index(name)
        total = 0
        for group in range(meta.num_row_groups):
            stats = meta.row_group(group).column(index).statistics
            if stats is None or not stats.has_null_count:
                total = pq.read_table(path, columns=[name]).column(name).null_count
                break
            total += stats.null_count
        counts[name] = total
    return counts


def _same_types(found: pa.Schema, target: pa.Schema) -> bool:
    return [(f.name, f.type) for f in found] == [(f.name, f.type) for f in target]


# Each write's staged files go to a folder of its own, `STAGING_PREFIX` + a new token.
STAGING_PREFIX = "_staging-"


@dataclass(frozen=True)
class StagedPartition:
    """A table partition whose data files are written but not yet published."""

    schema: TableSchema
    partition: tuple[int, str, str]  # academic_year, key_stage, data_stage
    actions: list[AddAction]  # delta-rs: the files to commit
    staging_dir: Path | None  # delta-spark: the staged Parquet to copy in
    write_seconds: float
    # How pupil ids were replaced: "carried" (the frame's carried pseudonyms), "hashed"
    # (hashed as written), None (no pupil ids).
    pseudonyms: str | None = None

    @property
    def rows(self) -> int | None:
        if self.staging_dir is not None:
            return None
        return sum(json.loads(action.stats)["numRecords"] for action in self.actions)


class TableStore:
    """The Delta tables of one output location.

    `pseudonym_key` is needed only to write a table with pupil identifiers; reading,
    restoring and the run log need none.
    """

    def __init__(self, spark: SparkSession, root: str | Path, backend: str = "auto", pseudonym_key: PseudonymKey | None = None):
        self.spark = spark
        self.root = Path(root)
        self.pseudonym_key = pseudonym_key
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

    def check_existing(self, schema: TableSchema) -> None:
        """Raise SchemaMismatchError if the table exists with other columns or types than `schema`."""
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

        The same as `commit(stage_partition(...))`; a release stages every table first and
        publishes them together (valueadded.io.publish).

        Returns:
            The table's Delta version after the commit.
        """
        return self.commit(self.stage_partition(frame, schema, year, key_stage, data_stage))

    def stage_partition(self, frame: DataFrame, schema: TableSchema, year: int, key_stage: str, data_stage: str) -> StagedPartition:
        """Compute and write a partition's data files without publishing them.

        Args:
            frame: the partition's rows with every column of `schema`; the partition
                columns may be absent, and are set here from the arguments either way.
                Pupil identifiers are raw here: the columns `schema` marks are
                pseudonymised as they are written.
            schema: the table's declaration.

        Readers see nothing of a staged partition until `commit`; a run that stops
        before then leaves only unreferenced files.
        """
        data_columns = [name for name in schema.names if name not in PARTITION_NAMES]
        missing = [name for name in data_columns if name not in frame.columns]
        carried = carried_pseudonyms(frame)  # pseudonyms computed upstream: used or dropped below
        unexpected = [name for name in frame.columns if name not in data_columns and name not in PARTITION_NAMES and name not in carried]
        if missing or unexpected:
            raise SchemaMismatchError(f"{schema.name}: columns differ from schema v{schema.version}: missing {missing}, unexpected {unexpected}")
        if schema.pseudonymised:
            if self.pseudonym_key is None:
                raise ValueError(f"{schema.name} holds pupil identifiers ({', '.join(schema.pseudonymised)}): the store needs a pseudonym key to write it")
            pseudonyms = "carried" if carried_column(self.pseudonym_key) in carried else "hashed"
            frame = pseudonymise(frame, schema, self.pseudonym_key)
        else:
            pseudonyms = None
        keyed = frame.select(
            F.lit(int(year)).cast("int").alias("academic_year"),
            F.lit(key_stage).alias("key_stage"),
            F.lit(data_stage).alias("data_stage"),
            *[F.col(name) for name in data_columns],
        )
        check_frame_schema(keyed, schema)
        self.check_existing(schema)
        partition = (int(year), key_stage, data_stage)
        partition_predicate(*partition)  # checks the values
        started = time.perf_counter()
        if self.backend == "delta-spark":
            # Beside the audience's tables: a restricted table's rows stay under restricted/.
            staging = self.root / schema.audience / f"{STAGING_PREFIX}{schema.name}-{uuid.uuid4().hex}"
            try:
                keyed.write.parquet(str(staging))
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            staged = StagedPartition(schema, partition, [], staging, time.perf_counter() - started, pseudonyms)
        else:
            actions = self._write_files(keyed.select(*data_columns), schema, *partition)
            staged = StagedPartition(schema, partition, actions, None, time.perf_counter() - started, pseudonyms)
        return staged

    def discard(self, staged: StagedPartition) -> None:
        """Remove a staged partition that will not be committed (or whose commit failed).

        The delta-spark backend's staged Parquet is only the source its commit copies
        from: removed here, or nothing would ever remove it (VACUUM does not look there).
        The delta-rs backend's files already lie in the partition's folder, referenced by
        no commit: Delta ignores them and VACUUM removes them; they are left as they are,
        since a failed commit may or may not have referred to them.
        """
        if staged.staging_dir is not None:
            shutil.rmtree(staged.staging_dir, ignore_errors=True)

    def commit(self, staged: StagedPartition) -> int:
        """Publish a staged partition: one Delta commit replacing the partition's files."""
        schema, partition = staged.schema, staged.partition
        target = self.path(schema)
        started = time.perf_counter()
        if self.backend == "delta-spark":
            (
                self.spark.read.parquet(str(staged.staging_dir))
                .write.format("delta")
                .mode("overwrite")
                .option("replaceWhere", partition_predicate(*partition))
                .partitionBy(*PARTITION_NAMES)
                .save(str(target))
            )
            shutil.rmtree(staged.staging_dir, ignore_errors=True)
        else:
            self._commit_actions(schema, partition, staged.actions)
        log.info(json.dumps({
            "table": schema.name, "partition": list(partition), "files": len(staged.actions), "rows": staged.rows,
            "write_seconds": round(staged.write_seconds, 3), "commit_seconds": round(time.perf_counter() - started, 3),
            "pseudonyms": staged.pseudonyms,
        }))
        return self.version(schema)

    def _write_files(self, frame: DataFrame, schema: TableSchema, year: int, key_stage: str, data_stage: str) -> list[AddAction]:
        """Write the partition's data files with Spark, in place, and describe them for a commit.

        Spark writes Parquet into a staging folder inside the table; the files are checked
        against the declared schema (types, and non-null columns from the Parquet null
        counts) and moved into the partition's hive-style folder, where readers find
        nothing of them until the commit lists them. A failure before the commit leaves
        only unreferenced files, which Delta ignores (and VACUUM removes).
        """
        target = self.path(schema)
        token = uuid.uuid4().hex
        staging = target / f"{STAGING_PREFIX}{token}"
        partition_dir = f"academic_year={int(year)}/key_stage={key_stage}/data_stage={data_stage}"
        try:
            frame.coalesce(partitions_per_core(frame)).write.mode("overwrite").parquet(str(staging))
            staged = sorted(staging.glob("part-*.parquet"))
            expected = pa.schema([f for f in schema.arrow_schema() if f.name not in PARTITION_NAMES])
            required = [c.name for c in schema.columns if not c.nullable and c.name not in PARTITION_NAMES]
            metadata = [pq.read_metadata(path) for path in staged]
            for path, meta in zip(staged, metadata):
                found = meta.schema.to_arrow_schema()
                if not _same_types(found, expected):
                    raise SchemaMismatchError(f"{schema.name}: staged Parquet types differ from the declared schema: {found}")
                for name, nulls in _null_counts(path, meta, required).items():
                    if nulls:
                        raise SchemaMismatchError(f"{schema.name}: {nulls} null value(s) in non-null column {name}")
            (target / partition_dir).mkdir(parents=True, exist_ok=True)
            actions = []
            values = {"academic_year": str(int(year)), "key_stage": key_stage, "data_stage": data_stage}
            for path, meta in zip(staged, metadata):
                relative = f"{partition_dir}/{token}-{path.name}"
                os.replace(path, target / relative)
                stat = (target / relative).stat()
                actions.append(AddAction(
                    path=relative, size=stat.st_size, partition_values=values,
                    modification_time=int(stat.st_mtime * 1000), data_change=True,
                    stats=json.dumps({"numRecords": meta.num_rows}),
                ))
            return actions
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _commit_actions(self, schema: TableSchema, partition: tuple[int, str, str], actions: list[AddAction]) -> None:
        target = self.path(schema)
        if self.version(schema) is None:
            try:
                create_table_with_add_actions(
                    str(target), DeltaSchema.from_arrow(schema.arrow_schema()), actions, partition_by=list(PARTITION_NAMES)
                )
                return
            except DeltaError:
                if self.version(schema) is None:
                    raise
                # Another run (another partition) created the table first: add to it.
                self.check_existing(schema)
        DeltaTable(str(target)).create_write_transaction(
            actions,
            mode="overwrite",
            schema=schema.arrow_schema(),
            partition_by=list(PARTITION_NAMES),
            partition_filters=[(name, "=", str(value)) for name, value in zip(PARTITION_NAMES, partition)],
        )

    def restore_partition(self, schema: TableSchema, partition: tuple[int, str, str], version: int | None) -> None:
        """Make one partition hold what it held at `version` (nothing if None), in one commit.

        Only this partition changes: other runs' partitions of the same table keep
        whatever they have committed since. The old files are still on disk (nothing is
        vacuumed by the engine), so no data is rewritten.
        """
        if self.version(schema) is None:
            return
        actions: list[AddAction] = []
        if version is not None:
            old = pa.record_batch(DeltaTable(str(self.path(schema)), version=version).get_add_actions(flatten=False)).to_pylist()
            wanted = {"academic_year": str(partition[0]), "key_stage": partition[1], "data_stage": partition[2]}
            for row in old:
                values = {k: (None if v is None else str(v)) for k, v in row["partition_values"].items()}
                if values == wanted:
                    actions.append(AddAction(
                        path=row["path"], size=int(row["size_bytes"]), partition_values=values,
                        modification_time=int(row["modification_time"].timestamp() * 1000) if hasattr(row["modification_time"], "timestamp") else int(row["modification_time"]),
                        data_change=True, stats=json.dumps({"numRecords": int(row["num_records"])}),
                    ))
        self._commit_actions(schema, partition, actions)

    def append(self, table: pa.Table, schema: TableSchema) -> int:
        """Append a few driver-side rows (the run log) to a table."""
        if schema.pseudonymised:
            raise ValueError(f"{schema.name} holds pupil identifiers: append writes only tables without them")
        if not _same_types(table.schema, schema.arrow_schema()):
            raise SchemaMismatchError(f"{schema.name}: rows do not match the declared schema: {table.schema}")
        self.check_existing(schema)
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
