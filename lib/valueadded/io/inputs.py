"""Readers for the input tables (Parquet or CSV) with the structural checks.

Each input table is found in the input directory as `<name>/` (a folder of Parquet or
CSV part files), `<name>.parquet` or `<name>.csv`. Structural faults stop the run with
one `StructuralInputError` naming the file, the column, the rule and the count:
a missing file or column, a Parquet column of the wrong type, an empty table, a CSV
that cannot be parsed. Values in a CSV that cannot be read as their column's type are
not structural: the row is kept with its raw text and set aside by the row rules as
`unparseable_value.<column>`, so nothing is coerced silently.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import Column as SparkColumn
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from py4j.protocol import Py4JJavaError
from pyspark.errors import PySparkException

from valueadded.io.schemas import SPARK_TYPES, TableSchema

log = logging.getLogger(__name__)

PARSE_ERRORS = "_parse_errors"  # array<string> of columns that failed to parse (CSV)
RAW = "_raw"  # CSV only: struct of the row's raw text, kept for rejected_rows


class StructuralInputError(ValueError):
    """An input cannot be used at all; the message names file, column, rule and count."""

    def __init__(self, path: str, rule: str, detail: str, column: str | None = None, count: int | None = None):
        self.path, self.rule, self.column, self.count = path, rule, column, count
        where = f"{path}" + (f", column {column}" if column else "")
        how_many = f" ({count} rows)" if count is not None else ""
        super().__init__(f"{where}: {rule}: {detail}{how_many}")


@dataclass(frozen=True)
class InputFile:
    """Where a table was found and in which format."""

    table: str
    path: Path
    format: str  # "parquet" or "csv"

    def data_files(self) -> list[Path]:
        if self.path.is_dir():
            return sorted(p for p in self.path.rglob(f"*.{self.format}") if p.is_file())
        return [self.path]


def locate(input_dir: Path, table: str) -> InputFile:
    """Find a table's file(s) in the input directory, or raise StructuralInputError."""
    folder = input_dir / table
    if folder.is_dir():
        for fmt in ("parquet", "csv"):
            if any(folder.rglob(f"*.{fmt}")):
                return InputFile(table, folder, fmt)
        raise StructuralInputError(str(folder), "missing_file", "folder holds no .parquet or .csv file")
    for fmt in ("parquet", "csv"):
        candidate = input_dir / f"{table}.{fmt}"
        if candidate.is_file():
            return InputFile(table, candidate, fmt)
    raise StructuralInputError(
        str(input_dir / table), "missing_file", f"input table {table!r} not found as {table}/, {table}.parquet or {table}.csv"
    )


def fingerprint(source: InputFile) -> str:
    """SHA-256 over the table's data files (names and bytes), in a fixed order."""
    digest = hashlib.sha256()
    for path in source.data_files():
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _summary(error: Exception) -> str:
    """The informative line of a Spark/JVM error (the error class or the malformed record)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for marker in ("Malformed", "[MALFORMED", "[FAILED_READ_FILE", "Exception:"):
        for line in lines:
            if marker in line:
                return line[:400]
    return lines[0][:400] if lines else type(error).__name__


def row_json(frame: DataFrame, schema: TableSchema) -> SparkColumn:
    """The row as JSON, for rejected_rows: the raw text of a CSV row, else the typed values.

    Evaluated only on rejected rows: serialising every input row would cost more than
    the whole validation.
    """
    if RAW in frame.columns:
        return F.to_json(F.col(RAW), {"ignoreNullFields": "false"})
    return F.to_json(F.struct(*[F.col(name) for name in schema.names]), {"ignoreNullFields": "false"})


def _read_parquet(spark: SparkSession, source: InputFile, schema: TableSchema) -> DataFrame:
    try:
        frame = spark.read.parquet(str(source.path))
        found = {field.name: field.dataType for field in frame.schema.fields}
    except PySparkException as error:
        raise StructuralInputError(str(source.path), "unreadable_file", _summary(error)) from error
    for column in schema.columns:
        if column.name not in found:
            raise StructuralInputError(str(source.path), "missing_column", "required column is absent", column.name)
        expected = SPARK_TYPES[column.type]
        if found[column.name] != expected:
            raise StructuralInputError(
                str(source.path),
                "wrong_type",
                f"expected {expected.simpleString()}, found {found[column.name].simpleString()}",
                column.name,
            )
    extra = sorted(set(found) - set(schema.names))
    if extra:
        log.info("%s: ignoring columns not in the contract: %s", source.path, extra)
    return frame.select(*schema.names, F.array().cast("array<string>").alias(PARSE_ERRORS))


def _parse(raw: SparkColumn, column_type: str) -> SparkColumn:
    if column_type == "string":
        return raw
    # try_cast gives null for text that is not a valid value of the type (e.g. "abc" for
    # an int, "2024-02-30" for a date): the caller records that as a parse error.
    return raw.try_cast(SPARK_TYPES[column_type])


def _read_csv(spark: SparkSession, source: InputFile, schema: TableSchema) -> DataFrame:
    try:
        raw = (
            spark.read.option("header", True)
            .option("mode", "FAILFAST")
            .option("enforceSchema", False)
            .csv(str(source.path))
        )
        header = raw.columns
    except PySparkException as error:
        raise StructuralInputError(str(source.path), "unreadable_csv", _summary(error)) from error
    for column in schema.columns:
        if column.name not in header:
            raise StructuralInputError(str(source.path), "missing_column", "required column is absent from the header", column.name)
    empty_as_null = {c.name: F.when(F.trim(F.col(c.name)) == "", None).otherwise(F.col(c.name)) for c in schema.columns}
    frame = raw.select(*[empty_as_null[c.name].alias(c.name) for c in schema.columns])
    failed = [
        F.when(F.col(c.name).isNotNull() & _parse(F.col(c.name), c.type).isNull(), F.lit(c.name))
        for c in schema.columns
        if c.type != "string"
    ]
    return frame.select(
        *[_parse(F.col(c.name), c.type).alias(c.name) for c in schema.columns],
        (F.filter(F.array(*failed), lambda x: x.isNotNull()) if failed else F.array().cast("array<string>")).alias(PARSE_ERRORS),
        F.struct(*[F.col(c.name) for c in schema.columns]).alias(RAW),
    )


def read_table(spark: SparkSession, source: InputFile, schema: TableSchema) -> tuple[DataFrame, int]:
    """Read one input table into the contract's columns plus parse errors and raw JSON.

    Returns:
        The frame (one row per input row: the contract's columns with the contract's
        types, then `_parse_errors`, the columns whose CSV text was not a valid value,
        and for CSV `_raw`, the row's text) and its row count, the table's "rows in".

    Raises:
        StructuralInputError: the file is missing, unreadable, lacks a column, has a
            column of the wrong type, or has no rows.
    """
    reader = _read_parquet if source.format == "parquet" else _read_csv
    frame = reader(spark, source, schema)
    try:
        if source.format == "csv":
            # Reading every column of every row (a plain count would skip parsing) makes
            # a malformed CSV line fail here, not mid-release.
            rows_in = frame.agg(F.count(F.lit(1)).alias("n"), F.max(F.length(F.to_json(F.col(RAW))))).first()["n"]
        else:
            rows_in = frame.count()
    except (PySparkException, Py4JJavaError) as error:
        rule = "unreadable_csv" if source.format == "csv" else "unreadable_file"
        raise StructuralInputError(str(source.path), rule, _summary(error)) from error
    if rows_in == 0:
        raise StructuralInputError(str(source.path), "empty_input", "the table has no rows", count=0)
    return frame, rows_in
