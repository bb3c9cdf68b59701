"""KS2 to KS4: Attainment 8, Progress 8 and its elements, and EBacc subject value added.

The stage `stage_measures` runs after the pupil table (one row per accepted KS4 pupil,
with `included` and `exclusion_reason`) and writes `pupil_results` (with KS2 prior
attainment and its group filled), `pupil_progress`, `national_estimates` and
`school_measures`.

Attainment 8 (A8) from the eight slot points of `ks4_results` (each 0-9):
English element = 2 x english_points, maths element = 2 x maths_points (double-weighted),
EBacc element = ebacc_1 + ebacc_2 + ebacc_3, open element = open_1 + open_2 + open_3;
A8 = the sum of the four elements (0-90).

Progress subjects (`subject` in the outputs), each with its outcome and divisor (the
year tables): `progress_8` (A8, /10), `english` (/2), `maths` (/2), `ebacc` (/3), `open`
(/3), and EBacc subject value added `ebacc_science`, `ebacc_humanities`,
`ebacc_languages` (the best points in the subject area, not divided, as DfE's ready
reckoner; a pupil with null points was not entered and is not in that subject's measure).

Who gets a score in a subject (`in_progress`): a pupil included in the pupil table, with
KS2 prior attainment (ks4_prior_attainment.py), entered in the subject. Who counts in the
national estimates (`in_national`): those of them in state-funded mainstream schools;
pupils in special schools get scores but do not shape the estimates. Every pupil of the
pupil table has one `pupil_progress` row per subject; a pupil without a score has the
first reason that applies: the pupil-level exclusion reason, `no_prior_attainment`,
`not_entered` (EBacc subjects), or `no_national_estimate` (a group no state-funded
mainstream pupil is in, when estimates are computed).

Estimates are computed from this run's pupils (source `computed`: group means, with n
and SD) or applied from a published table named in the release configuration
(`published_estimates.ks4`; source `published:<name>`, n null, intervals from the
published SDs). Progress, the extreme-negative adjustment, school scores, intervals and
bands are those of estimates.py. `school_measures` also has `attainment_8`: the mean A8
of each school's included pupils (with or without prior attainment), with n.
"""

from __future__ import annotations

import logging

import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from valueadded import sums
from valueadded.io.pseudonym import carried_pseudonyms
from valueadded.io.schemas import NATIONAL_ESTIMATES, PUPIL_PROGRESS, PUPIL_RESULTS, SCHOOL_MEASURES
from valueadded.measures.estimates import (
    national_estimate_rows,
    progress_measures,
    pupil_progress_rows,
    school_progress_rows,
    without_estimate_is_excluded,
)
from valueadded.measures.ks4_prior_attainment import NO_PRIOR_ATTAINMENT, ks2_prior_attainment, prior_attainment_group
from valueadded.measures.ks4_tables import KS4_SUBJECTS, KS4YearTables, load_ks4_tables
from valueadded.measures.published import check_applies, estimates_table, load_published_estimates
from valueadded.spark import materialise

log = logging.getLogger(__name__)

KEY_STAGE = "ks4"
COMPUTED_SOURCE = "computed"
NOT_ENTERED = "not_entered"
NATIONAL_PROVISION, NATIONAL_SECTOR = "mainstream", "state_funded"
ATTAINMENT_8_MEASURE = "attainment_8"
PROGRESS_8_MEASURE = "progress_8"
ELEMENT_SUBJECTS = ("english", "maths", "ebacc", "open")
EBACC_SUBJECT_POINTS = {
    "ebacc_science": "science_points",
    "ebacc_humanities": "humanities_points",
    "ebacc_languages": "languages_points",
}


def element_points() -> dict[str, Column]:
    """Attainment 8 element points per pupil, from the slot columns of ks4_results."""
    return {
        "english": F.col("english_points") * 2,
        "maths": F.col("maths_points") * 2,
        "ebacc": F.col("ebacc_1_points") + F.col("ebacc_2_points") + F.col("ebacc_3_points"),
        "open": F.col("open_1_points") + F.col("open_2_points") + F.col("open_3_points"),
    }


def with_attainment_and_prior(pupils: DataFrame, tables: KS4YearTables) -> DataFrame:
    """Fill prior_attainment and prior_attainment_group; add attainment_8 and <element>_element.

    Args:
        pupils: the pupil table (one row per pupil, with the ks4_results columns).

    Returns:
        The same rows and columns (PUPIL_RESULTS first), with the two prior attainment
        columns filled and five more columns at the end.
    """
    prior = ks2_prior_attainment(tables)
    elements = element_points()
    attainment_8 = elements["english"] + elements["maths"] + elements["ebacc"] + elements["open"]
    return (
        pupils.withColumn("prior_attainment", prior)
        .withColumn("prior_attainment_group", prior_attainment_group(
            F.col("prior_attainment"), tables.prior_attainment_groups, tables.prior_attainment_step))
        .select(
            "*",
            *(points.cast("double").alias(f"{element}_element") for element, points in elements.items()),
            attainment_8.cast("double").alias("attainment_8"),
        )
    )


def _subject_entry(subject: str) -> Column:
    """struct(subject, outcome, entered) of one subject for one pupil."""
    if subject == "progress_8":
        outcome, entered = F.col("attainment_8"), F.lit(True)
    elif subject in ELEMENT_SUBJECTS:
        outcome, entered = F.col(f"{subject}_element"), F.lit(True)
    else:
        points = F.col(EBACC_SUBJECT_POINTS[subject])
        outcome, entered = points, points.isNotNull()
    return F.struct(F.lit(subject).alias("subject"), outcome.cast("double").alias("outcome"), entered.alias("entered"))


def progress_long_frame(pupils: DataFrame) -> DataFrame:
    """One row per pupil per KS4 subject: the long frame of estimates.py, with exclusion_reason.

    Args:
        pupils: with_attainment_and_prior() output.
    """
    entries = F.explode(F.array(*(_subject_entry(subject) for subject in KS4_SUBJECTS)))
    exploded = pupils.select(
        "pupil_id", *carried_pseudonyms(pupils), "school_id", "prior_attainment_group", "included", "exclusion_reason", "school_provision",
        "school_sector", entries.alias("entry"),
    )
    has_prior = F.col("prior_attainment_group").isNotNull()
    in_progress = F.col("included") & has_prior & F.col("entry.entered")
    national_school = (F.col("school_provision") == NATIONAL_PROVISION) & (F.col("school_sector") == NATIONAL_SECTOR)
    reason = (
        F.when(~F.col("included"), F.col("exclusion_reason"))
        .when(~has_prior, F.lit(NO_PRIOR_ATTAINMENT))
        .when(~F.col("entry.entered"), F.lit(NOT_ENTERED))
    )
    return exploded.select(
        "pupil_id",
        *carried_pseudonyms(exploded),
        "school_id",
        F.col("entry.subject").alias("subject"),
        "prior_attainment_group",
        F.col("entry.outcome").alias("outcome"),
        in_progress.alias("in_progress"),
        (in_progress & national_school).alias("in_national"),
        reason.alias("exclusion_reason"),
    )


def attainment_8_school_rows(pupils: DataFrame) -> DataFrame:
    """`school_measures` rows `attainment_8`: mean A8 of each school's included pupils, with n."""
    return (
        pupils.where(F.col("included"))
        .groupBy("school_id")
        .agg(F.count(F.lit(1)).cast("int").alias("n"), sums.exact_mean(F.col("attainment_8")).alias("score"))
        .select(
            "school_id",
            F.lit(ATTAINMENT_8_MEASURE).alias("measure"),
            "n",
            F.col("score").cast("double").alias("score"),
            F.lit(None).cast("double").alias("lower"),
            F.lit(None).cast("double").alias("upper"),
            F.lit(None).cast("string").alias("band"),
        )
    )


def school_measure_rows(schools: DataFrame, pupils: DataFrame) -> DataFrame:
    """All KS4 `school_measures` rows: progress_<subject> (progress_8 for Progress 8) and attainment_8.

    Args:
        schools: progress_measures()["schools"].
        pupils: with_attainment_and_prior() output.
    """
    progress = school_progress_rows(schools)
    measure = F.when(F.col("measure") == F.lit("progress_progress_8"), F.lit(PROGRESS_8_MEASURE)).otherwise(F.col("measure"))
    return progress.withColumn("measure", measure).unionByName(attainment_8_school_rows(pupils))


def _published_estimates(release, tables: KS4YearTables) -> tuple[pd.DataFrame | None, str]:
    """The published estimates this run applies (None: compute them), and their source label."""
    name = (release.config.published_estimates or {}).get(KEY_STAGE)
    if not name:
        return None, COMPUTED_SOURCE
    table = load_published_estimates(name)
    check_applies(table, KEY_STAGE, KS4_SUBJECTS, tables.prior_attainment_groups, tables.source)
    return estimates_table(table, KS4_SUBJECTS), table.source


def stage_measures(release) -> None:
    """The KS4 measures stage: reads release.frames["pupils"], publishes the four KS4 tables.

    Args:
        release: the pipeline's Release (frames, year, config, record, publish()).
    """
    tables = load_ks4_tables(release.year)
    base = release.frames["pupils"]
    # Computed once: the long frame, the CVA stage (three passes, one per model and one for
    # the pupils outside both) and pupil_results read it.
    pupils = materialise(with_attainment_and_prior(base, tables))
    release.frames["pupil_table"] = base  # still materialised: kept so the run frees it
    release.frames["pupils"] = pupils
    release.publish(PUPIL_RESULTS, pupils.select(*PUPIL_RESULTS.names, *carried_pseudonyms(pupils)))

    long = materialise(progress_long_frame(pupils))
    release.frames["ks4_long"] = long
    published, source = _published_estimates(release, tables)
    result = progress_measures(long, tables.progress_rules(), published)
    release.record.row_counts["ks4_z_star"] = result["z_star"]

    release.publish(PUPIL_PROGRESS, pupil_progress_rows(without_estimate_is_excluded(result["pupils"])))
    release.publish(NATIONAL_ESTIMATES, national_estimate_rows(result["estimates"], source))
    release.publish(SCHOOL_MEASURES, school_measure_rows(result["schools"], pupils))
    log.info("ks4 measures: estimates %s, z* %s", source, result["z_star"])
