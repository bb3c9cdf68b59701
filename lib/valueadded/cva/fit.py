"""Fit a random-intercept model to a Spark DataFrame: gather sufficient statistics, then REML.

Model (pupil ``i`` in group ``j``)::

    y_ij = beta_0 + sum_k beta_k x_ijk + u_j + e_ij,   u_j ~ N(0, sigma2_school),  e_ij ~ N(0, sigma2_pupil)

The data are read once. One ``mapInArrow`` pass over the partitions turns each Arrow
batch (the row's values travel as one list column) into the float64 matrix
``W = [1, x_1 .. x_q, y]`` and accumulates, per partition,

* ``W'W`` (it holds ``N``, ``X'X``, ``X'y`` and ``y'y``);
* per group: ``n_j``, the column sums ``s_j`` and ``t_j = sum y`` (sorted segment sums);
* the number of null or non-finite values per column, and of values too large to sum;

and emits them as a few rows per partition (one row per group, the rows of ``W'W``, a
row of each count). The driver adds the partitions' rows up and hands the
result to :func:`valueadded.cva.reml.fit_reml`, which needs nothing per pupil. No pupil
row reaches the driver and no per-group Python call is made (``mapInArrow`` rather than
``mapInPandas``: the batches go straight to numpy), so the cost is one scan plus the
Arrow hand-over, whatever the number of schools.

Every sum is of whole numbers, so the statistics, and the fit, are the same to the last
bit whatever the partitioning or row order (SPEC 4). Each value is put on the grid of
valueadded.sums (whole units of 2^-50: a value of 4 or more keeps every bit, a smaller
one moves by at most 4.4e-16) and its units split into five parts of at most 2^17
(`grid_parts`); products of parts are summed exactly by BLAS in blocks and as whole
numbers after that. ``W'W`` is then the exact sum of the rows' products, rounded once;
the group sums are their parts' exact sums added in a fixed order, with compensation
(within a unit in the last place of the exact sums in every case tested). Values must be
under 2^39 (5.5e11) in size, and a fit under 2^29 rows.

Rows with a null (or NaN or infinite) outcome, term or group are an error naming the
columns and counts: the caller decides who is in the model, this module never drops rows.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from threadpoolctl import threadpool_limits

from valueadded.cva.reml import DEFAULT_MIN_GROUPS, RemlResult, SufficientStatistics, fit_reml
from valueadded.sums import UNIT_BITS

log = logging.getLogger(__name__)

INTERCEPT = "intercept"

_NUMERIC_TYPES = (T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.FloatType, T.DoubleType, T.DecimalType, T.BooleanType)
_GROUP_TYPES = (T.StringType, T.ByteType, T.ShortType, T.IntegerType, T.LongType)

# Rows per Arrow batch handed to the partition pass. Spark's default (10,000) makes the
# pass markedly slower on a national cohort; 100,000 rows of ~50 doubles is ~40 MB.
ARROW_BATCH_ROWS = 100_000
_BATCH_CONF = "spark.sql.execution.arrow.maxRecordsPerBatch"

# Kinds of row the partition pass emits.
_GROUP_ROW, _CROSS_ROW, _NULL_ROW, _RANGE_ROW = 0, 1, 2, 3

# The sums are exact (see _partition_sums): each value is put on valueadded.sums' grid
# (whole units of 2^-50) and its units held in GRID_PARTS parts of GRID_PART_BITS bits.
GRID_PART_BITS = 18
GRID_PARTS = 5
GRID_LIMIT = 2.0**39  # values must be smaller in size: 2^39 x 2^50 units fit in the five parts
WHOLE_LIMIT = 2.0 ** (GRID_PART_BITS - 1 - (UNIT_BITS - 2 * GRID_PART_BITS))  # 8: one part, value x 2^14
CHUNK_ROWS = 2**15  # rows per exact block product (at most 2^19 keeps its sums under 2^53)
MAX_ROWS = 2**29  # rows whose products' parts still add up in int64 (each at most 2^34)


class NoRowsError(ValueError):
    """The DataFrame has no rows to fit."""


class MissingValuesError(ValueError):
    """The outcome, a term or the group column has null or non-finite values."""

    def __init__(self, message: str, counts: dict[str, int]):
        super().__init__(message)
        self.counts = counts


@dataclass(frozen=True)
class RandomInterceptFit:
    """A fitted random-intercept model (see :func:`fit_random_intercept`).

    Attributes:
        coefficients: one row per term, indexed by term (``"intercept"`` first):
            ``estimate``, ``std_error`` (the GLS covariance at the REML variance components).
        sigma2_school: REML estimate of the between-group (school) variance.
        sigma2_pupil: REML estimate of the within-group (pupil) variance.
        reml_criterion: -2 x the restricted log-likelihood, on lme4's ``REMLcrit`` scale.
        group_effects: one row per group: ``group``, ``n``, ``mean_residual`` (mean of
            y - x'beta), ``shrinkage`` k = sigma2_school / (sigma2_school + sigma2_pupil / n),
            ``effect`` = k x mean_residual (the BLUP of u_j), ``conditional_variance`` =
            sigma2_school sigma2_pupil / (sigma2_pupil + n sigma2_school), and ``lower``,
            ``upper`` = effect -/+ z sqrt(conditional_variance) at the requested level.
        n_pupils, n_groups: rows and groups fitted.
        boundary: the school variance was estimated as exactly 0 (the fit is OLS).
        converged: the optimiser converged.
        gather_seconds, fit_seconds: wall time of the Spark pass and of the REML fit.
        statistics: the sufficient statistics the fit used.
        reml: the underlying :class:`~valueadded.cva.reml.RemlResult`.
    """

    coefficients: pd.DataFrame
    sigma2_school: float
    sigma2_pupil: float
    reml_criterion: float
    group_effects: pd.DataFrame
    n_pupils: int
    n_groups: int
    boundary: bool
    converged: bool
    gather_seconds: float
    fit_seconds: float
    statistics: SufficientStatistics
    reml: RemlResult

    @property
    def term_names(self) -> tuple[str, ...]:
        return self.statistics.term_names

    @property
    def term_means(self) -> pd.Series:
        """Mean of each design column over the fitted rows (the intercept's is 1)."""
        stats = self.statistics
        return pd.Series(stats.xtx[0] / stats.n_total, index=list(stats.term_names))


def _check_columns(df: DataFrame, outcome: str, terms: Sequence[str], group: str) -> None:
    if isinstance(terms, str):
        raise TypeError("terms must be a list of column names, not a string")
    terms = list(terms)
    if INTERCEPT in terms:
        raise ValueError("'intercept' is always included: do not list it in terms")
    if len(set(terms)) != len(terms):
        raise ValueError(f"terms repeat a column: {sorted({t for t in terms if terms.count(t) > 1})}")
    for role, name in (("outcome", outcome), ("group", group)):
        if name in terms:
            raise ValueError(f"the {role} column {name!r} is also listed as a term")
    if outcome == group:
        raise ValueError(f"{outcome!r} is both the outcome and the group column")
    types = {f.name: f.dataType for f in df.schema.fields}
    missing = [c for c in (outcome, *terms, group) if c not in types]
    if missing:
        raise ValueError(f"column(s) not in the DataFrame: {missing}")
    not_numeric = [c for c in (outcome, *terms) if not isinstance(types[c], _NUMERIC_TYPES)]
    if not_numeric:
        raise TypeError(
            "outcome and terms must be numeric (or boolean) columns: "
            + ", ".join(f"{c} is {types[c].simpleString()}" for c in not_numeric)
        )
    if not isinstance(types[group], _GROUP_TYPES):
        raise TypeError(f"group column {group!r} must be a string or integer column, is {types[group].simpleString()}")


def grid_parts(values: np.ndarray) -> np.ndarray:
    """Each value's whole units of 2^-50 (valueadded.sums' grid) as `GRID_PARTS` signed parts.

    ``values`` is (rows, columns); the result is (rows, GRID_PARTS x columns), column
    ``k x columns + c`` holding part k of column c, with
    ``round(value x 2^50) = sum_k part_k x 2^(18 k)`` and every |part| at most 2^17.
    Every step is exact in doubles (scaling by a power of two, rounding to a whole number
    and taking that off) except the last rounding, which drops what is below half a unit:
    a value of 4 or more in size keeps every bit. Values must be under 2^39 in size.
    """
    rows, columns = values.shape
    parts = np.empty((rows, GRID_PARTS, columns))
    scaled = values * 2.0 ** (UNIT_BITS - GRID_PART_BITS * (GRID_PARTS - 1))
    for k in range(GRID_PARTS - 1, -1, -1):
        part = parts[:, k, :]
        np.rint(scaled, out=part)
        if k:
            np.subtract(scaled, part, out=scaled)
            scaled *= 2.0**GRID_PART_BITS
    return parts.reshape(rows, GRID_PARTS * columns)


def _chunk_parts(design: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows' `grid_parts`, only the part columns that are not zero throughout.

    Returns (block, used): block[:, i] is part column used[i] (k x columns + c). A column
    of whole numbers of at most 8 in size (the intercept, indicators) has one part, its
    value x 2^14 (units of 2^-50 in part 2, worth 2^36; at most 2^17): computed as that,
    not in five steps.
    """
    columns = design.shape[1]
    whole = np.all(design == np.rint(design), axis=0) & (np.abs(design).max(axis=0) <= WHOLE_LIMIT)
    other = np.flatnonzero(~whole)
    blocks, used = [], []
    if whole.any():
        whole_columns = np.flatnonzero(whole)
        blocks.append(design[:, whole_columns] * 2.0 ** (UNIT_BITS - 2 * GRID_PART_BITS))
        used.append(2 * columns + whole_columns)
    if other.size:
        parts = grid_parts(design[:, other])
        nonzero = np.flatnonzero(parts.any(axis=0))
        blocks.append(parts[:, nonzero])
        k, position = np.divmod(nonzero, other.size)
        used.append(k * columns + other[position])
    return np.hstack(blocks), np.concatenate(used)


def _partition_sums(width: int):
    """The mapInArrow function: per-partition sufficient statistics of W = [1, x, y],
    exactly, as whole numbers of grid parts (`grid_parts`).

    Input batches have a string column ``g`` (the group) and a list column ``v`` holding
    each row's ``width - 1`` values (the terms, then the outcome). Output rows (columns
    ``v0`` .. of int64, GRID_PARTS x width of them): one per group (kind 0: the sums of
    each part column; n is the intercept's), GRID_PARTS x width rows of P'P, P the rows'
    parts (kind 1, row ``index``), one row of null or non-finite counts and one of values
    out of the grid's range (kinds 2 and 3: group column, terms, outcome).

    Products of parts are at most 2^34 and a block of CHUNK_ROWS (2^15) rows adds that
    many of them, so BLAS forms every sum of a block exactly (whole numbers under 2^49,
    well under 2^53), in whatever order it adds; blocks, batches and groups are then added
    as int64. Nothing depends on how the rows were partitioned or ordered.
    """
    parts_width = GRID_PARTS * width

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        cross = np.zeros((parts_width, parts_width), dtype=np.int64)
        nulls = np.zeros(width, dtype=np.int64)
        outside = np.zeros(width, dtype=np.int64)
        labels, sums = [], []
        seen = False
        for batch in batches:
            rows = batch.num_rows
            if rows == 0:
                continue
            seen = True
            groups = batch.column(0)
            values = batch.column(1).flatten().to_numpy(zero_copy_only=False).reshape(rows, width - 1)
            finite = np.isfinite(values)
            group_missing = groups.is_null().to_numpy(zero_copy_only=False)
            in_range = np.abs(np.where(finite, values, 0.0)) < GRID_LIMIT
            if not finite.all() or group_missing.any() or not in_range.all():
                nulls[0] += group_missing.sum()
                nulls[1:] += (~finite).sum(axis=0)
                outside[1:] += (~in_range).sum(axis=0)
                keep = finite.all(axis=1) & in_range.all(axis=1) & ~group_missing
                values, groups = values[keep], groups.filter(pa.array(keep))
            if values.shape[0] == 0:
                continue
            encoded = pc.dictionary_encode(groups)
            codes = encoded.indices.to_numpy(zero_copy_only=False)
            for start in range(0, values.shape[0], CHUNK_ROWS):
                # The chunk's rows in group order (W'W does not depend on it), as parts.
                chunk_codes = codes[start : start + CHUNK_ROWS]
                order = np.argsort(chunk_codes, kind="stable")
                ordered = chunk_codes[order]
                design = np.empty((order.size, width))
                design[:, 0] = 1.0
                design[:, 1:] = values[start : start + CHUNK_ROWS][order]
                block, used = _chunk_parts(design)
                cross[np.ix_(used, used)] += (block.T @ block).astype(np.int64)
                starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
                group_sums = np.zeros((starts.size, parts_width), dtype=np.int64)
                group_sums[:, used] = np.add.reduceat(block, starts, axis=0)
                sums.append(group_sums)
                labels.append(encoded.dictionary.take(pa.array(ordered[starts])).to_numpy(zero_copy_only=False))
        if not seen:
            return
        kinds, names, index, blocks = [], [], [], []
        if sums:
            by_group = pd.DataFrame(np.vstack(sums)).groupby(np.concatenate(labels), sort=True).sum()
            kinds.append(np.full(len(by_group), _GROUP_ROW))
            names.append(by_group.index.to_numpy(dtype=object))
            index.append(np.zeros(len(by_group), dtype=np.int64))
            blocks.append(by_group.to_numpy(dtype=np.int64))
        kinds += [np.full(parts_width, _CROSS_ROW), np.array([_NULL_ROW, _RANGE_ROW])]
        names += [np.full(parts_width, None, dtype=object), np.array([None, None], dtype=object)]
        index += [np.arange(parts_width, dtype=np.int64), np.zeros(2, dtype=np.int64)]
        counts = np.zeros((2, parts_width), dtype=np.int64)
        counts[0, :width], counts[1, :width] = nulls, outside
        blocks += [cross, counts]
        block = np.vstack(blocks)
        yield pa.RecordBatch.from_arrays(
            [pa.array(np.concatenate(kinds), pa.int32()), pa.array(np.concatenate(names), pa.string()),
             pa.array(np.concatenate(index), pa.int64()), *[pa.array(block[:, k]) for k in range(parts_width)]],
            names=["kind", "group", "index", *[f"v{k}" for k in range(parts_width)]],
        )

    return run


def _exact_cross(parts_cross: np.ndarray, width: int) -> np.ndarray:
    """W'W from the partitions' summed P'P: the exact sum of the products of the rows'
    grid values, rounded once to the nearest double (Python's int division)."""
    weights = [1 << (GRID_PART_BITS * k) for k in range(GRID_PARTS)]
    exact = np.zeros((width, width), dtype=object)
    blocks = parts_cross.astype(object)
    for k in range(GRID_PARTS):
        for m in range(GRID_PARTS):
            exact += blocks[k * width : (k + 1) * width, m * width : (m + 1) * width] * (weights[k] * weights[m])
    scale = 1 << (2 * UNIT_BITS)
    return np.array([[value / scale for value in row] for row in exact], dtype=np.float64)


def _grid_sums(part_sums: np.ndarray, width: int) -> np.ndarray:
    """Sums from their parts' sums (groups x (GRID_PARTS x width), int64), as doubles.

    Each part's term is exact; they are added largest first with Neumaier's compensation,
    always in that order, so the result is the same whatever the rows' order, and close to
    the exact sum even where the terms cancel: within a unit in the last place in each of
    2,000 groups of cancelling values tested (the exact sum rounded, in a check outside the
    tests), where adding the terms smallest first was off by far more. Python integers would give the exact sum for
    certain but cost about 0.5 s for a KS2 model's 16,500 schools.
    """
    terms = [
        part_sums[:, k * width : (k + 1) * width].astype(np.float64) * 2.0 ** (GRID_PART_BITS * k - UNIT_BITS)
        for k in range(GRID_PARTS - 1, -1, -1)
    ]
    total, error = terms[0], np.zeros_like(terms[0])
    for term in terms[1:]:
        added = total + term
        error += np.where(np.abs(total) >= np.abs(term), (total - added) + term, (term - added) + total)
        total = added
    return total + error


@contextmanager
def _arrow_batch_rows(spark, rows: int):
    """Set the session's Arrow batch size for one action, then put it back."""
    previous = spark.conf.get(_BATCH_CONF, None)
    spark.conf.set(_BATCH_CONF, str(rows))
    try:
        yield
    finally:
        if previous is None:
            spark.conf.unset(_BATCH_CONF)
        else:
            spark.conf.set(_BATCH_CONF, previous)


def _group_values(ids: np.ndarray, group_type: T.DataType) -> np.ndarray:
    """Group labels back in the group column's own type (they travel as strings)."""
    if isinstance(group_type, T.StringType):
        return ids.astype(object)
    return ids.astype(np.int64)


def gather_statistics(
    df: DataFrame, outcome: str, terms: Sequence[str], group: str, names: Sequence[str] | None = None
) -> SufficientStatistics:
    """Gather the random-intercept sufficient statistics of `df` in one Spark pass.

    Args:
        df: one row per pupil (any partitioning or order).
        outcome: numeric outcome column.
        terms: numeric (or boolean) columns of the design; an intercept is added first.
        group: group (school) column, string or integer.
        names: names to report the terms under (default: the column names).

    Raises:
        MissingValuesError: a row has a null or non-finite outcome, term or group (the
            message names every such column with its count).
        NoRowsError: no rows.
        ValueError: values of 2^39 or more in size (names the columns and counts), or
            2^29 rows or more: beyond what the exact sums hold.
    """
    _check_columns(df, outcome, terms, group)
    terms = list(terms)
    names = list(names) if names is not None else terms
    if len(names) != len(terms):
        raise ValueError(f"{len(names)} names for {len(terms)} terms")
    group_type = df.schema[group].dataType
    width = len(terms) + 2  # intercept, terms, outcome
    # One list column of the row's values: cheaper for Spark to hand over than ~50 columns.
    selected = df.select(
        F.col(group).cast("string").alias("g"),
        F.array(*[F.col(c).cast("double") for c in [*terms, outcome]]).alias("v"),
    )
    parts_width = GRID_PARTS * width
    out_schema = T.StructType(
        [T.StructField("kind", T.IntegerType()), T.StructField("group", T.StringType()), T.StructField("index", T.LongType())]
        + [T.StructField(f"v{k}", T.LongType()) for k in range(parts_width)]
    )
    with _arrow_batch_rows(df.sparkSession, ARROW_BATCH_ROWS):
        parts = selected.mapInArrow(_partition_sums(width), schema=out_schema).toPandas()
    values = [f"v{k}" for k in range(parts_width)]
    labels = [f"group column {group!r}", *terms, f"outcome {outcome!r}"]

    null_counts = parts.loc[parts.kind == _NULL_ROW, values[:width]].to_numpy().sum(axis=0)
    if np.any(null_counts > 0):
        counts = {label: int(c) for label, c in zip(labels, null_counts) if c > 0}
        raise MissingValuesError(
            "rows with null or non-finite values (filter them before fitting; nothing is dropped): "
            + ", ".join(f"{label}: {n} row(s)" for label, n in counts.items()),
            counts,
        )
    range_counts = parts.loc[parts.kind == _RANGE_ROW, values[:width]].to_numpy().sum(axis=0)
    if np.any(range_counts > 0):
        raise ValueError(
            f"values of {GRID_LIMIT:.0f} (2^39) or more in size, beyond what the exact sums hold: "
            + ", ".join(f"{label}: {int(c)} row(s)" for label, c in zip(labels, range_counts) if c > 0)
        )
    cross_rows = parts[parts.kind == _CROSS_ROW]
    if cross_rows.empty:
        raise NoRowsError("no rows to fit")
    parts_cross = cross_rows.groupby("index", sort=True)[values].sum().to_numpy()
    if parts_cross.shape != (parts_width, parts_width):
        raise NoRowsError("no rows to fit")
    cross = _exact_cross(parts_cross, width)
    if cross[0, 0] == 0:
        raise NoRowsError("no rows to fit")
    n_total = int(round(cross[0, 0]))
    if n_total >= MAX_ROWS:
        raise ValueError(f"{n_total} rows: the exact sums hold fewer than {MAX_ROWS} (2^29)")
    by_group = parts[parts.kind == _GROUP_ROW].groupby("group", sort=True)[values].sum()
    sums = _grid_sums(by_group.to_numpy(dtype=np.int64), width)
    return SufficientStatistics(
        term_names=(INTERCEPT, *names),
        n_total=n_total,
        xtx=cross[: width - 1, : width - 1],
        xty=cross[: width - 1, width - 1],
        yty=float(cross[width - 1, width - 1]),
        group_ids=_group_values(by_group.index.to_numpy(), group_type),
        group_n=np.rint(sums[:, 0]).astype(np.int64),
        group_sum_x=np.column_stack([np.rint(sums[:, 0]), sums[:, 1 : width - 1]]),
        group_sum_y=sums[:, width - 1],
    )


def fit_statistics(
    stats: SufficientStatistics, *, min_groups: int = DEFAULT_MIN_GROUPS, level: float = 0.95,
    gather_seconds: float = 0.0,
) -> RandomInterceptFit:
    """REML fit from gathered statistics (see :func:`fit_random_intercept`)."""
    started = time.perf_counter()
    # The fit is many small (p x p) solves: a multi-threaded BLAS only adds hand-over costs,
    # and on a busy machine (a Spark driver beside its executors) it is 10-40x slower.
    with threadpool_limits(limits=1, user_api="blas"):
        result = fit_reml(stats, min_groups=min_groups)
    fit_seconds = time.perf_counter() - started
    effects = result.group_effects(level=level)
    coefficients = pd.DataFrame(
        {"estimate": result.coefficients, "std_error": result.std_errors},
        index=pd.Index(list(result.term_names), name="term"),
    )
    return RandomInterceptFit(
        coefficients=coefficients,
        sigma2_school=float(result.sigma2_school),
        sigma2_pupil=float(result.sigma2_pupil),
        reml_criterion=float(result.reml_criterion),
        group_effects=effects,
        n_pupils=int(result.n_total),
        n_groups=int(result.n_groups),
        boundary=bool(result.boundary),
        converged=bool(result.converged),
        gather_seconds=gather_seconds,
        fit_seconds=fit_seconds,
        statistics=stats,
        reml=result,
    )


def fit_random_intercept(
    df: DataFrame,
    outcome: str,
    terms: Sequence[str],
    group: str,
    *,
    names: Sequence[str] | None = None,
    min_groups: int = DEFAULT_MIN_GROUPS,
    level: float = 0.95,
) -> RandomInterceptFit:
    """Fit ``outcome ~ 1 + terms + (1 | group)`` by exact REML to a Spark DataFrame.

    Args:
        df: one row per pupil; every row is fitted (filter first: a null outcome, term or
            group is an error, never silently dropped).
        outcome: numeric outcome column.
        terms: numeric (or boolean, taken as 0/1) columns; an intercept is always included
            and must not be listed.
        group: the grouping (school) column, string or integer.
        names: names to report the terms under (default: the column names).
        min_groups: fewer groups is a :class:`~valueadded.cva.reml.TooFewGroupsError`.
        level: coverage of the group effects' intervals (default 95%).

    Returns:
        A :class:`RandomInterceptFit`.

    Raises:
        MissingValuesError: null or non-finite values (names the columns and counts).
        ValueError: values of 2^39 or more in size, or 2^29 rows or more (the exact sums'
            limits; names the columns and counts).
        SingularDesignError: the design is rank deficient (names the terms, e.g. a
            category with no pupils or collinear terms); nothing is dropped.
        TooFewGroupsError: fewer than `min_groups` groups.
        DegenerateDataError: the data cannot identify the model.
    """
    started = time.perf_counter()
    stats = gather_statistics(df, outcome, terms, group, names=names)
    gather_seconds = time.perf_counter() - started
    fit = fit_statistics(stats, min_groups=min_groups, level=level, gather_seconds=gather_seconds)
    log.info(
        "fitted %s ~ %d terms | %s: %d rows, %d groups; gather %.2f s, fit %.3f s; sigma2_school %.4g, sigma2_pupil %.4g%s",
        outcome, len(stats.term_names), group, fit.n_pupils, fit.n_groups, gather_seconds, fit.fit_seconds,
        fit.sigma2_school, fit.sigma2_pupil, " (boundary)" if fit.boundary else "",
    )
    return fit
