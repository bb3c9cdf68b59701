"""The release's roll-up stage: every measure at every level, subgroups, suppression,
identification, comparisons and trends (SPEC 2.4, issue 6).

Runs after the CVA stage, before the write. It reads what the measure and CVA stages left:
the pupil table (`release.frames["pupils"]`), `pupil_progress`, `school_scores` and
`national_estimates_unsuppressed`, and the intake's schools and trust spells. Then:

1. pupil values (rollup.pupils): one row per pupil with a value per measure, the pupil's
   subgroups, school, trust weight, authority and region: the drill-down table
   `pupil_measures`;
2. school cells and the sums of every level (rollup.aggregate, rollup.trusts): school,
   trust (the trust rule and weights), local authority, region, nation, for all pupils
   and every subgroup value; figures with intervals, bands and the national figure;
3. trends from earlier years' `unsuppressed_measures` (rollup.history);
4. suppression (rollup.suppression); the unsuppressed figures go to the restricted
   `unsuppressed_measures`, the shown ones to the published tables;
5. school comparisons (rollup.compare) and identification (rollup.identify).

Published: school_measures, trust_measures, la_measures, region_measures,
national_measures, subgroup_measures, identified_schools and national_estimates (with
suppression). Restricted: unsuppressed_measures, pupil_measures; school_scores and
national_estimates_unsuppressed are written as the measure stages left them.
"""

from __future__ import annotations

import logging

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from valueadded.config import ConfigError
from valueadded.cva.stage import load_release_models
from valueadded.io.delta_store import TableStore
from valueadded.io.schemas import (
    IDENTIFIED_SCHOOLS,
    LA_MEASURES,
    NATIONAL_ESTIMATES_UNSUPPRESSED,
    NATIONAL_MEASURES,
    PARTITION_NAMES,
    PUBLISHED_NATIONAL_ESTIMATES,
    PUBLISHED_SCHOOL_MEASURES,
    PUPIL_MEASURES,
    PUPIL_PROGRESS,
    REGION_MEASURES,
    SCHOOL_SCORES,
    SUBGROUP_MEASURES,
    TRUST_MEASURES,
    UNSUPPRESSED_MEASURES,
    TableSchema,
)
from valueadded.rollup import aggregate, compare, history, identify, pupils, suppression, trusts
from valueadded.rollup.config import RollupConfig
from valueadded.rollup.measures import ATTAINMENT, MEASURES, measure_names, measures_of_kind, progress_measure_name
from valueadded.spark import materialise

log = logging.getLogger(__name__)

TOO_FEW_SCHOOLS = "too_few_counted_schools"


def _data_columns(schema: TableSchema) -> list[str]:
    return [name for name in schema.names if name not in PARTITION_NAMES]


def _materialised(release, name: str, frame: DataFrame) -> DataFrame:
    """The frame computed now and cut from its lineage (valueadded.spark.materialise), kept
    in `release.frames` so the run frees it.

    The frames this stage starts from carry the plan of the whole release so far (intake,
    measures, CVA). Every step built on them would make Spark analyse, match against the
    cache and print that plan again: minutes even for a small cohort.
    """
    frame = materialise(frame)
    release.frames[f"rollup_{name}"] = frame
    return frame


def _gathered(frame: DataFrame) -> DataFrame:
    """A small frame computed once, brought to the driver and marked for broadcast."""
    return F.broadcast(frame.sparkSession.createDataFrame(frame.collect(), frame.schema))


def progress_rules(key_stage: str, year: int) -> tuple[float, dict[str, float]]:
    """The interval quantile and the band thresholds per measure name of the key stage."""
    if key_stage == "ks2":
        from valueadded.measures.ks2 import load_tables

        rules = load_tables(year).rules
    else:
        from valueadded.measures.ks4_tables import load_ks4_tables

        rules = load_ks4_tables(year).progress_rules()
    return rules.ci_z, {progress_measure_name(subject): value for subject, value in rules.well_thresholds.items()}


def attainment_values(key_stage: str, year: int) -> dict:
    measures = measures_of_kind(key_stage, ATTAINMENT)
    if key_stage == "ks2":
        from valueadded.measures.ks2 import load_tables

        return pupils.ks2_attainment_values(measures, load_tables(year))
    return pupils.ks4_attainment_values(measures)


def school_context(schools: DataFrame, school_trusts: DataFrame) -> DataFrame:
    """One row per school: school_id, la_code, la_name, region_code, region_name, phase,
    provision, trust_id, trust_name, in_trust_figure, trust_weight."""
    return schools.select("school_id", "la_code", "la_name", "region_code", "region_name", "phase", "provision").join(
        school_trusts.select("school_id", "trust_id", "trust_name", "in_trust_figure", "trust_weight"), on="school_id", how="left"
    ).withColumn("in_trust_figure", F.coalesce(F.col("in_trust_figure"), F.lit(False)))


def school_table(figures: DataFrame, context: DataFrame, groups: DataFrame, config: RollupConfig, key_stage: str) -> DataFrame:
    """The published school_measures rows (data columns), suppression applied."""
    rows = figures.where((F.col("level") == "school") & (F.col("subgroup") == aggregate.ALL)).withColumnRenamed("unit_id", "school_id")
    trust_scores = figures.where(
        (F.col("level") == "trust") & (F.col("subgroup") == aggregate.ALL) & ~F.col("suppressed")
    ).select(F.col("unit_id").alias("trust_id"), "measure", F.col("score").alias("trust_score"))
    table = (
        rows.join(F.broadcast(context.select("school_id", "la_code", "region_code", "trust_id", "in_trust_figure")), on="school_id", how="left")
        .join(F.broadcast(trust_scores), on=["trust_id", "measure"], how="left")
        .join(F.broadcast(groups), on="school_id", how="left")
    )
    table = compare.with_ranks(table, [
        ("trust_id", "rank_in_trust", "schools_ranked_in_trust"),
        ("similar_schools_group", "similar_schools_rank", "similar_schools_count"),
    ])
    table = compare.with_quadrant(table, config.quadrants[key_stage])
    return suppression.shown(table, PUBLISHED_SCHOOL_MEASURES.suppressible).select(*_data_columns(PUBLISHED_SCHOOL_MEASURES))


def trust_table(figures: DataFrame, eligibility: DataFrame, names: DataFrame) -> DataFrame:
    """The published trust_measures rows: every trust with a school with pupils in the measure."""
    rows = figures.where((F.col("level") == "trust") & (F.col("subgroup") == aggregate.ALL)).select(
        F.col("unit_id").alias("trust_id"), "measure", *(c for c in figures.columns if c not in aggregate.FIGURE_KEY)
    )
    table = (
        eligibility.join(rows, on=["trust_id", "measure"], how="left")
        .join(F.broadcast(names), on="trust_id", how="left")
        .withColumn("eligibility_reason", F.when(~F.col("eligible"), F.lit(TOO_FEW_SCHOOLS)))
        .withColumn("suppressed", F.coalesce(F.col("suppressed"), F.lit(False)))
    )
    return suppression.shown(table, TRUST_MEASURES.suppressible).select(*_data_columns(TRUST_MEASURES))


def area_table(figures: DataFrame, level: str, schema: TableSchema, unit: str, names: DataFrame | None) -> DataFrame:
    """The published la_measures / region_measures / national_measures rows."""
    rows = figures.where((F.col("level") == level) & (F.col("subgroup") == aggregate.ALL)).withColumnRenamed("unit_id", unit)
    if names is not None:
        rows = rows.join(F.broadcast(names), on=unit, how="left")
    return suppression.shown(rows, schema.suppressible).select(*_data_columns(schema))


def subgroup_table(figures: DataFrame) -> DataFrame:
    rows = figures.where(F.col("subgroup") != aggregate.ALL)
    return suppression.shown(rows, SUBGROUP_MEASURES.suppressible).select(*_data_columns(SUBGROUP_MEASURES))


def published_estimates(release, estimates: DataFrame, progress: DataFrame, min_pupils: int) -> DataFrame:
    """The published national_estimates rows from the unsuppressed ones."""
    applied = bool((release.config.published_estimates or {}).get(release.key_stage))
    group_pupils = None
    if applied:
        group_pupils = (
            progress.where(F.col("in_national") & F.col("progress").isNotNull())
            .groupBy("subject", "prior_attainment_group")
            .agg(F.count(F.lit(1)).alias("pupils"))
        )
    rows = suppression.national_estimate_suppression(estimates, group_pupils, min_pupils)
    return rows.select(*_data_columns(PUBLISHED_NATIONAL_ESTIMATES))


def _check_measures(found: set[str], key_stage: str) -> None:
    """Every measure of school_scores is rolled up: a measure the catalogue lacks is a defect."""
    unknown = sorted(found - {m.name for m in MEASURES[key_stage]})
    if unknown:
        raise ValueError(
            f"school_scores has {key_stage} measure(s) {unknown} that valueadded.rollup.measures does not roll up; add them there"
        )


def stage_rollup(release) -> None:
    """The roll-up stage: reads the measure stages' frames, publishes the roll-up tables."""
    config: RollupConfig | None = release.config.rollup
    if config is None:
        raise ConfigError(f"{release.config.source}: the release configuration names no rollup settings (key `rollup`)")
    key_stage, year = release.key_stage, release.year
    store = TableStore(release.spark, release.output_dir)
    intake = release.intake

    scores = _materialised(release, "scores", release.outputs[SCHOOL_SCORES.name][1])
    release.publish(SCHOOL_SCORES, scores)  # written from the checkpoint, not computed again
    progress = release.outputs[PUPIL_PROGRESS.name][1]
    z, thresholds = progress_rules(key_stage, year)

    context = _gathered(school_context(intake.schools, trusts.school_trusts(intake.trust_membership, intake.schools, year, config.trusts)))
    centres = {spec.name: spec.outcome.school_score_centre for spec in load_release_models(key_stage)}

    wide = _materialised(release, "wide", pupils.pupil_value_frame(
        release.frames["pupils"], pupils.progress_by_pupil(progress, key_stage), context, key_stage,
        config.subgroups, attainment_values(key_stage, year), centres,
    ))
    dimensions = {d: config.subgroups.values(d) for d in config.subgroups.dimensions}
    # The school figures' suppression is decided as the cells are built, where the
    # aggregation has put each school's cells together; decided on the figures, the rule's
    # window would shuffle the ~2M school subgroup figures again.
    cells = _materialised(release, "cells", aggregate.marked_school_cells(
        wide, measure_names(key_stage), dimensions, config.subgroups.measures[key_stage], config.min_pupils
    ))

    # Small frames left lazy are cheap to recompute from the checkpoints; a job each costs more.
    eligibility = aggregate.trust_eligibility(cells, context, config.trusts.min_schools)
    placed = aggregate.placed_cells(cells, context, eligibility.where(F.col("eligible")).select("trust_id", "measure"))
    # Every level above schools from one pass over the cells; the nation's sums are a few of
    # its rows (they give the national SDs and scores the other figures need).
    higher_sums = _materialised(release, "higher_sums", aggregate.higher_level_sums(placed))
    national_sums = _gathered(higher_sums.where(F.col("level") == aggregate.NATIONAL))
    sds = aggregate.national_sds(scores, national_sums, MEASURES[key_stage], z)
    nationals = F.broadcast(aggregate.national_scores(national_sums, config.min_pupils))
    last_year = history.earlier_partition(store, UNSUPPRESSED_MEASURES, year - 1, key_stage, config.history_data_stage)
    two_years_ago = history.earlier_partition(store, UNSUPPRESSED_MEASURES, year - 2, key_stage, config.history_data_stage)

    def finished(name: str, figures: DataFrame, decided: bool = False) -> DataFrame:
        """Figures with trends and suppression (`decided`: they carry withheld_reason()'s columns)."""
        trended = history.with_trends(figures, last_year, two_years_ago, config.min_pupils)
        if decided:
            return _materialised(release, name, suppression.with_trend_suppression(trended))
        return _materialised(release, name, suppression.with_suppression(trended, config.min_pupils))

    # Three parts: the levels above schools, the schools' own figures, and the schools'
    # subgroups (most of the rows: built from the cells without a shuffle).
    higher = finished("higher", aggregate.figures_from_sums(higher_sums, sds, nationals, thresholds, z))
    school_all = finished("school_all", aggregate.school_figures(scores, nationals))
    decision = ("suppression_reason", "suppressed")
    school_subgroups = finished("school_subgroups", aggregate.figures_from_sums(
        aggregate.school_subgroup_sums(cells, carry=decision), sds, nationals, thresholds, z, carry=decision
    ), decided=True)
    headline = higher.unionByName(school_all)
    figures = headline.unionByName(school_subgroups)
    _record_counts(release, figures, key_stage)

    la_names = context.groupBy("la_code").agg(F.max("la_name").alias("la_name"), F.max("region_code").alias("region_code"))
    region_names = context.groupBy("region_code").agg(F.max("region_name").alias("region_name"))
    groups = compare.similar_school_groups(wide, context, key_stage, config.similar_schools)
    ranked = identify.ranked_subgroups(school_subgroups, config.identification, config.identification.measure[key_stage])
    last_identified = history.earlier_partition(store, IDENTIFIED_SCHOOLS, year - 1, key_stage, config.history_data_stage)

    release.publish(PUPIL_MEASURES, pupils.drill_down_rows(wide, _data_columns(PUPIL_MEASURES)))
    release.publish(UNSUPPRESSED_MEASURES, figures.select(*_data_columns(UNSUPPRESSED_MEASURES)))
    release.publish(PUBLISHED_SCHOOL_MEASURES, school_table(headline, context, groups, config, key_stage))
    release.publish(TRUST_MEASURES, trust_table(headline, eligibility, trusts.trust_names(context)))
    release.publish(LA_MEASURES, area_table(headline, "la", LA_MEASURES, "la_code", la_names))
    release.publish(REGION_MEASURES, area_table(headline, "region", REGION_MEASURES, "region_code", region_names))
    release.publish(NATIONAL_MEASURES, area_table(headline, aggregate.NATIONAL, NATIONAL_MEASURES, "unit_id", None))
    release.publish(SUBGROUP_MEASURES, subgroup_table(school_subgroups.unionByName(higher)))
    release.publish(IDENTIFIED_SCHOOLS, identify.identified_schools(
        ranked, last_identified, config.identification, config.identification.measure[key_stage]
    ))
    release.publish(PUBLISHED_NATIONAL_ESTIMATES, published_estimates(
        release, release.outputs[NATIONAL_ESTIMATES_UNSUPPRESSED.name][1], progress, config.min_pupils
    ))


def _record_counts(release, figures: DataFrame, key_stage: str) -> None:
    """Figures per level and measure, and how many are withheld, in the run log (runs the plan once)."""
    rows = figures.groupBy("level", "measure").agg(
        F.count(F.lit(1)).alias("figures"), F.sum(F.col("suppressed").cast("int")).alias("withheld")
    ).collect()
    _check_measures({r["measure"] for r in rows if r["level"] == "school"}, key_stage)
    by_level: dict[str, dict[str, int]] = {}
    for row in rows:
        level = by_level.setdefault(row["level"], {"figures": 0, "withheld": 0})
        level["figures"] += row["figures"]
        level["withheld"] += row["withheld"]
    release.record.row_counts["rollup"] = dict(sorted(by_level.items()))
    log.info("roll-up figures: %s", release.record.row_counts["rollup"])
