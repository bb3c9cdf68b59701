"""Roll pupil values up to schools, trusts, local authorities, regions and the nation.

Every figure above a pupil is a weighted mean of pupil values, so it can be built from
additive sums. The pupils are aggregated per school and measure into *cells*: for all
pupils and for each subgroup value, the number of pupils n and the sum of their values
(and, for all pupils of CVA measures, the sum of squares). Every level is then a sum of
its schools' cells (every sum of doubles here is exact, valueadded.sums, so no figure
depends on the order Spark adds in):

    score = sum(w x value_sum) / sum(w x n)

with w = 1 except in trusts, where w is the school's time-in-trust weight and only
counted schools take part (valueadded.rollup.trusts). A school's all-pupil figures are
taken unchanged from `school_scores` (the measure stages' own, e.g. shrunken CVA).

Intervals (progress and CVA measures): score +/- z x SD x sqrt(sum(w^2 x n)) / sum(w x n),
which is z x SD / sqrt(n) when w = 1. SD is the national pupil-level SD the school
intervals use: for progress measures it is read back from the school rows
((upper - score) x sqrt(n) / z, the same for every school, computed or published), for
CVA it is the SD of the pupils' CVA values nationally. Bands follow the school rule
(valueadded.measures.estimates.band) with the key stage's thresholds.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from valueadded import sums
from valueadded.measures.estimates import band
from valueadded.rollup.measures import CVA, MEASURES, PROGRESS, Measure
from valueadded.rollup.pupils import value_column

ALL = "all"
NATIONAL = "national"
LEVELS = ("school", "trust", "la", "region", NATIONAL)
FIGURE_KEY = ("level", "unit_id", "subgroup", "subgroup_value", "measure")
SUM_COLUMNS = ("schools", "n", "weighted_pupils", "weighted_sq_pupils", "weighted_sum", "value_sum_sq")


def school_cells(
    wide: DataFrame, measures: tuple[str, ...], dimensions: dict[str, tuple[str, ...]], subgroup_measures: tuple[str, ...] | None = None
) -> DataFrame:
    """One row per school, measure and subgroup value with pupils: the additive sums.

    Args:
        wide: one row per pupil: school_id, a value column per measure
            (valueadded.rollup.pupils.value_column; null: the pupil is not in the measure)
            and a column per dimension (valueadded.rollup.pupils.pupil_value_frame).
        measures: the measures (names) to aggregate.
        dimensions: dimension -> its values (the subgroups to aggregate).
        subgroup_measures: the measures broken down by subgroup (None: every measure);
            the others get all-pupil cells only.

    Returns:
        school_id, measure, subgroup, subgroup_value, n, value_sum, value_sum_sq (all
        pupils of CVA measures only: the national SD of pupil CVA values is the one figure
        that needs it); subgroup = subgroup_value = "all" for all pupils.
    """
    return _all_pupil_cells(wide, measures).unionByName(_subgroup_cells(wide, measures, dimensions, subgroup_measures))


def marked_school_cells(
    wide: DataFrame,
    measures: tuple[str, ...],
    dimensions: dict[str, tuple[str, ...]],
    subgroup_measures: tuple[str, ...] | None,
    min_pupils: int,
) -> DataFrame:
    """school_cells() with the suppression rule's decision on each cell
    (valueadded.rollup.suppression.withheld_reason, unit school_id).

    The all-pupil cells and the subgroup cells come from two aggregations, one grouped by
    school and one by school and measure; each part is marked where its aggregation put a
    school's cells together, so the rule's window needs no shuffle of its own. (Marked
    after a union, the cells would be shuffled again: a union keeps no partitioning.)
    """
    from valueadded.rollup.suppression import withheld_reason  # here: suppression imports the schemas

    all_pupils = withheld_reason(_all_pupil_cells(wide, measures), min_pupils, unit=("school_id",))
    subgroups = withheld_reason(_subgroup_cells(wide, measures, dimensions, subgroup_measures), min_pupils, unit=("school_id",))
    return all_pupils.unionByName(subgroups)


def _all_pupil_cells(wide: DataFrame, measures: tuple[str, ...]) -> DataFrame:
    """Every measure's all-pupil cell of each school, from one aggregation of the pupils.

    Squares are summed for CVA measures only: every exact sum is three sums, and the
    aggregation's generated code must stay small enough for the JVM to compile
    (tests/unit/test_rollup_rules.py).
    """
    squared = {m.name for measures_of_stage in MEASURES.values() for m in measures_of_stage if m.kind == CVA}
    aggregates = []
    for index, measure in enumerate(measures):
        value = F.col(value_column(measure))
        square = sums.exact_sum(value * value) if measure in squared else F.lit(None).cast("double")
        aggregates += [F.count(value).alias(f"_n{index}"), sums.exact_sum(value).alias(f"_s{index}"), square.alias(f"_q{index}")]
    cells = F.explode(F.array(*(
        F.struct(
            F.lit(measure).alias("measure"),
            F.col(f"_n{index}").cast("int").alias("n"),
            F.col(f"_s{index}").alias("value_sum"),
            F.col(f"_q{index}").alias("value_sum_sq"),
        )
        for index, measure in enumerate(measures)
    )))
    return (
        wide.groupBy("school_id").agg(*aggregates)
        .select("school_id", cells.alias("cell"))
        .where(F.col("cell.n") > 0)
        .select("school_id", "cell.measure", F.lit(ALL).alias("subgroup"), F.lit(ALL).alias("subgroup_value"),
                "cell.n", "cell.value_sum", "cell.value_sum_sq")
    )


def _subgroup_cells(
    wide: DataFrame, measures: tuple[str, ...], dimensions: dict[str, tuple[str, ...]], subgroup_measures: tuple[str, ...] | None
) -> DataFrame:
    """The subgroup cells of the measures broken down by subgroup.

    One row per pupil and measure (only those measures: 6 of the 14 KS2 measures by
    default), aggregated per school and measure with a count and a sum per subgroup value.
    """
    broken_down = [m for m in measures if subgroup_measures is None or m in subgroup_measures]
    cells = [(dimension, value) for dimension, options in dimensions.items() for value in options]
    if not broken_down or not cells:
        return wide.sparkSession.createDataFrame(
            [], "school_id string, measure string, subgroup string, subgroup_value string, n int, value_sum double, value_sum_sq double"
        )
    entries = F.explode(F.array(*(
        F.struct(F.lit(m).alias("measure"), F.col(value_column(m)).alias("value")) for m in broken_down
    )))
    values = (
        wide.select("school_id", *dimensions, entries.alias("entry"))
        .where(F.col("entry.value").isNotNull())
        .select("school_id", F.col("entry.measure").alias("measure"), *sums.part_columns(F.col("entry.value"), "value"), *dimensions)
    )
    aggregates = []
    for index, (dimension, value) in enumerate(cells):
        member = F.col(dimension) == value
        aggregates.append(F.count(F.when(member, F.lit(1))).alias(f"_n{index}"))
        aggregates.append(sums.sum_of_parts("value", where=member).alias(f"_s{index}"))
    rows = F.explode(F.array(*(
        F.struct(
            F.lit(dimension).alias("subgroup"),
            F.lit(value).alias("subgroup_value"),
            F.col(f"_n{index}").cast("int").alias("n"),
            F.col(f"_s{index}").alias("value_sum"),
            F.lit(None).cast("double").alias("value_sum_sq"),
        )
        for index, (dimension, value) in enumerate(cells)
    )))
    return (
        values.groupBy("school_id", "measure").agg(*aggregates)
        .select("school_id", "measure", rows.alias("cell"))
        .where(F.col("cell.n") > 0)
        .select("school_id", "measure", "cell.*")
    )


def placed_cells(cells: DataFrame, schools: DataFrame, eligible_trusts: DataFrame) -> DataFrame:
    """The cells with their school's authority, region, trust and trust weight.

    `trust_weight` is kept only for counted schools of trusts eligible for the measure
    (null: the cell is in no trust figure).

    Args:
        cells: school_cells() output.
        schools: one row per school: school_id, la_code, region_code, trust_id, trust_weight.
        eligible_trusts: trust_id, measure of the trusts that have a figure.
    """
    context = schools.select("school_id", "la_code", "region_code", "trust_id", "trust_weight")
    eligible = eligible_trusts.select("trust_id", "measure", F.lit(True).alias("_eligible"))
    return (
        cells.join(F.broadcast(context), on="school_id", how="inner")
        .join(F.broadcast(eligible), on=["trust_id", "measure"], how="left")
        .withColumn("trust_weight", F.when(F.col("_eligible"), F.col("trust_weight")))
        .drop("_eligible")
    )


HIGHER_LEVELS = ("trust", "la", "region", NATIONAL)


def higher_level_sums(placed: DataFrame) -> DataFrame:
    """The additive sums of trusts, authorities, regions and the nation, in one aggregation.

    Each cell goes, with its weight, to its trust (when it has a trust weight), authority,
    region and the nation. Returns FIGURE_KEY and SUM_COLUMNS.
    """
    one = F.lit(1.0)
    units = {
        "trust": (F.col("trust_id"), F.col("trust_weight")),
        "la": (F.col("la_code"), one),
        "region": (F.col("region_code"), one),
        NATIONAL: (F.lit(NATIONAL), one),
    }
    up = F.explode(F.array(*(
        F.struct(F.lit(level).alias("level"), units[level][0].alias("unit_id"), units[level][1].alias("w")) for level in HIGHER_LEVELS
    )))
    w = F.col("w")
    return (
        placed.select("subgroup", "subgroup_value", "measure", "n", "value_sum", "value_sum_sq", up.alias("up"))
        .select("up.*", "subgroup", "subgroup_value", "measure", "n", "value_sum", "value_sum_sq")
        .where(w.isNotNull())
        .groupBy(*FIGURE_KEY)
        .agg(
            F.count(F.lit(1)).cast("int").alias("schools"),
            F.sum("n").cast("int").alias("n"),
            sums.exact_sum(w * F.col("n")).alias("weighted_pupils"),
            sums.exact_sum(w * w * F.col("n")).alias("weighted_sq_pupils"),
            sums.exact_sum(w * F.col("value_sum")).alias("weighted_sum"),
            sums.exact_sum(F.col("value_sum_sq")).alias("value_sum_sq"),
        )
        .select(*FIGURE_KEY, *SUM_COLUMNS)
    )


def school_subgroup_sums(cells: DataFrame, carry: tuple[str, ...] = ()) -> DataFrame:
    """School subgroup cells in the sums' shape (weight 1), with the cells' columns `carry`."""
    n = F.col("n").cast("double")
    return cells.where(F.col("subgroup") != ALL).select(
        F.lit("school").alias("level"), F.col("school_id").alias("unit_id"), "subgroup", "subgroup_value", "measure",
        F.lit(1).alias("schools"), "n", n.alias("weighted_pupils"), n.alias("weighted_sq_pupils"),
        F.col("value_sum").alias("weighted_sum"), "value_sum_sq", *carry,
    )


def level_sums(cells: DataFrame, schools: DataFrame, eligible_trusts: DataFrame) -> DataFrame:
    """The sums of every level: school cells (all pupils and subgroups) and the levels above."""
    placed = placed_cells(cells, schools, eligible_trusts)
    n = F.col("n").cast("double")
    school = cells.select(
        F.lit("school").alias("level"), F.col("school_id").alias("unit_id"), "subgroup", "subgroup_value", "measure",
        F.lit(1).alias("schools"), "n", n.alias("weighted_pupils"), n.alias("weighted_sq_pupils"),
        F.col("value_sum").alias("weighted_sum"), "value_sum_sq",
    )
    return school.unionByName(higher_level_sums(placed))


def trust_eligibility(cells: DataFrame, schools: DataFrame, min_schools: int) -> DataFrame:
    """One row per trust and measure with a member school with pupils in the measure.

    Columns: trust_id, measure, schools_in_trust, schools_counted, eligible.
    """
    members = cells.where(F.col("subgroup") == ALL).join(
        F.broadcast(schools.where(F.col("trust_id").isNotNull()).select("school_id", "trust_id", "trust_weight")),
        on="school_id", how="inner",
    )
    return members.groupBy("trust_id", "measure").agg(
        F.count(F.lit(1)).cast("int").alias("schools_in_trust"),
        F.count(F.col("trust_weight")).cast("int").alias("schools_counted"),
    ).withColumn("eligible", F.col("schools_counted") >= F.lit(min_schools))


def national_sds(school_scores: DataFrame, national_sums: DataFrame, measures: tuple[Measure, ...], z: float) -> DataFrame:
    """One row per progress or CVA measure: the national pupil-level SD for intervals.

    Progress: read back from the school intervals; CVA: SD of the pupils' CVA values
    (from the national all-pupil sums).
    """
    progress = [m.name for m in measures if m.kind == PROGRESS]
    cva = [m.name for m in measures if m.kind == CVA]
    from_schools = (
        school_scores.where(F.col("measure").isin(progress) & F.col("upper").isNotNull())
        .groupBy("measure")
        .agg(F.max((F.col("upper") - F.col("score")) * F.sqrt(F.col("n").cast("double")) / F.lit(z)).alias("national_sd"))
    )
    n = F.col("n").cast("double")
    variance = (F.col("value_sum_sq") - F.col("weighted_sum") * F.col("weighted_sum") / n) / (n - 1)
    from_pupils = national_sums.where(
        (F.col("level") == NATIONAL) & (F.col("subgroup") == ALL) & F.col("measure").isin(cva) & (F.col("n") > 1)
    ).select("measure", F.sqrt(F.greatest(variance, F.lit(0.0))).alias("national_sd"))
    return from_schools.unionByName(from_pupils)


def national_scores(national_sums: DataFrame, min_pupils: int) -> DataFrame:
    """subgroup, subgroup_value, measure, national_score from the national sums.

    The national figure is null where national_measures / subgroup_measures withhold it
    (the suppression rule), so the benchmark beside other figures never shows it.
    """
    from valueadded.rollup.suppression import withheld_reason  # here: suppression imports the schemas

    national = national_sums.where(F.col("level") == NATIONAL).select(
        *FIGURE_KEY, "n", (F.col("weighted_sum") / F.col("weighted_pupils")).alias("_score")
    )
    return withheld_reason(national, min_pupils).select(
        "subgroup", "subgroup_value", "measure", F.when(~F.col("suppressed"), F.col("_score")).alias("national_score")
    )


def _threshold(thresholds: dict[str, float]) -> Column:
    value = F.lit(None).cast("double")
    for measure, number in sorted(thresholds.items()):
        value = F.when(F.col("measure") == measure, F.lit(float(number))).otherwise(value)
    return value


FIGURE_COLUMNS = (*FIGURE_KEY, "schools", "n", "weighted_pupils", "score", "lower", "upper", "band", "national_score")


def figures_from_sums(
    sums: DataFrame, sds: DataFrame, nationals: DataFrame, thresholds: dict[str, float], z: float, carry: tuple[str, ...] = ()
) -> DataFrame:
    """Figures (FIGURE_COLUMNS) from sums: score, 95% interval, band and the national figure.

    Args:
        sums: FIGURE_KEY and SUM_COLUMNS (level_sums(), higher_level_sums() or
            school_subgroup_sums()).
        sds: national_sds() output (progress and CVA measures).
        nationals: national_scores() output.
        thresholds: measure -> "well above/below" threshold (progress measures).
        z: the interval's normal quantile.
        carry: columns of `sums` kept after FIGURE_COLUMNS.

    Only broadcast joins: the rows keep their partitioning.
    """
    score = F.col("weighted_sum") / F.col("weighted_pupils")
    half = F.lit(z) * F.col("national_sd") * F.sqrt(F.col("weighted_sq_pupils")) / F.col("weighted_pupils")
    threshold = _threshold(thresholds)
    figures = (
        sums.join(F.broadcast(sds), on="measure", how="left")
        .join(F.broadcast(nationals), on=["subgroup", "subgroup_value", "measure"], how="left")
        .select(*FIGURE_KEY, "schools", "n", "weighted_pupils", score.alias("score"), half.alias("_half"), "national_score", *carry)
        .withColumn("lower", F.col("score") - F.col("_half"))
        .withColumn("upper", F.col("score") + F.col("_half"))
    )
    # A measure without a threshold has no band: band() would call every figure "average".
    banded = F.when(threshold.isNotNull(), band(F.col("score"), F.col("lower"), F.col("upper"), threshold))
    return figures.withColumn("band", banded).select(*FIGURE_COLUMNS, *carry)


def school_figures(school_scores: DataFrame, nationals: DataFrame) -> DataFrame:
    """The schools' all-pupil figures (FIGURE_COLUMNS): school_scores as the measures computed them."""
    return school_scores.select(
        F.lit("school").alias("level"), F.col("school_id").alias("unit_id"), F.lit(ALL).alias("subgroup"),
        F.lit(ALL).alias("subgroup_value"), "measure", F.lit(1).alias("schools"), "n",
        F.col("n").cast("double").alias("weighted_pupils"), "score", "lower", "upper", "band",
    ).join(F.broadcast(nationals), on=["subgroup", "subgroup_value", "measure"], how="left").select(*FIGURE_COLUMNS)


def figures(
    sums: DataFrame, school_scores: DataFrame, sds: DataFrame, thresholds: dict[str, float], z: float, min_pupils: int
) -> DataFrame:
    """Every figure (FIGURE_COLUMNS) from level_sums(), the schools' all-pupil rows from school_scores.

    The release builds the same rows in parts (valueadded.rollup.stage); this is the
    whole in one plan, for small frames and tests.
    """
    nationals = national_scores(sums, min_pupils)
    school_all = (F.col("level") == "school") & (F.col("subgroup") == ALL)
    rolled = figures_from_sums(sums.where(~school_all), sds, nationals, thresholds, z)
    return rolled.unionByName(school_figures(school_scores, nationals))
