"""Input and output table definitions: one source for code, validation and docs.

Every table the engine reads or writes is declared here once, as a `TableSchema` of
`Column`s. The same declaration gives the Spark schema (for reading and for the
pre-write check), the Arrow schema (for the Delta writer), the structural validation
of inputs and the generated table documentation.

Types are the small vocabulary below; each maps to one Spark and one Arrow type, so
nothing is ever widened or narrowed silently on the way to Delta.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
from pyspark.sql import types as T

from valueadded.rollup.measures import MEASURES, all_measure_names

SPARK_TYPES = {
    "string": T.StringType(),
    "int": T.IntegerType(),
    "long": T.LongType(),
    "double": T.DoubleType(),
    "boolean": T.BooleanType(),
    "date": T.DateType(),
    "timestamp": T.TimestampType(),
}

ARROW_TYPES = {
    "string": pa.string(),
    "int": pa.int32(),
    "long": pa.int64(),
    "double": pa.float64(),
    "boolean": pa.bool_(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}


@dataclass(frozen=True)
class Column:
    """One column: its name, type, whether it may be null, and what it means.

    Output columns that could carry a pupil identifier say so, and the write path
    replaces the identifier with its pseudonym (valueadded.io.pseudonym):
    `identifies_pupil` for a column holding one, `json_pupil_keys` for a JSON text
    column holding one under those keys.
    """

    name: str
    type: str
    nullable: bool = True
    description: str = ""
    identifies_pupil: bool = False
    json_pupil_keys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.type not in SPARK_TYPES:
            raise ValueError(f"column {self.name}: unknown type {self.type!r}")
        if (self.identifies_pupil or self.json_pupil_keys) and self.type != "string":
            raise ValueError(f"column {self.name}: only a string column can hold a pupil pseudonym")


@dataclass(frozen=True)
class TableSchema:
    """A table: name, grain, columns, and (for outputs) partitioning and audience."""

    name: str
    grain: str
    columns: tuple[Column, ...]
    version: int = 1
    description: str = ""
    partition_by: tuple[str, ...] = ()
    audience: str = "restricted"  # "published" tables are what dashboards read
    key: tuple[str, ...] = field(default=())
    # Published tables: the columns withheld (set to null) on a row whose figure rests on
    # too few pupils; the row says why in `suppression_reason` (valueadded.rollup.suppression).
    suppressible: tuple[str, ...] = field(default=())

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def pseudonymised(self) -> tuple[str, ...]:
        """Names of the columns that hold a pupil identifier, whole or inside JSON text."""
        return tuple(c.name for c in self.columns if c.identifies_pupil or c.json_pupil_keys)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.name} has no column {name!r}")

    def spark_schema(self) -> T.StructType:
        return T.StructType(
            [T.StructField(c.name, SPARK_TYPES[c.type], c.nullable) for c in self.columns]
        )

    def arrow_schema(self) -> pa.Schema:
        return pa.schema(
            [pa.field(c.name, ARROW_TYPES[c.type], c.nullable) for c in self.columns]
        )


PARTITION_COLUMNS = (
    Column("academic_year", "int", False, "Academic year of the results, e.g. 2024 for 2023/24."),
    Column("key_stage", "string", False, "Key stage of the outcome: ks2 or ks4."),
    Column("data_stage", "string", False, "unvalidated (before the checking exercise) or validated."),
)
PARTITION_NAMES = tuple(c.name for c in PARTITION_COLUMNS)

# ----------------------------------------------------------------------------- inputs

SCHOOLS = TableSchema(
    name="schools",
    grain="one row per school",
    key=("school_id",),
    columns=(
        Column("school_id", "string", False, "Unique reference number of the school (URN)."),
        Column("school_name", "string", False, "School name."),
        Column("phase", "string", False, "primary or secondary."),
        Column("provision", "string", False, "mainstream or special."),
        Column("sector", "string", False, "state_funded or independent (independent schools are outside the measures)."),
        Column("la_code", "string", False, "Three-digit local authority code."),
        Column("la_name", "string", False, "Local authority name."),
        Column("region_code", "string", False, "Region code (E12000001-E12000009)."),
        Column("region_name", "string", False, "Region name."),
    ),
)

TRUST_MEMBERSHIP = TableSchema(
    name="trust_membership",
    grain="one row per school per spell in a multi-academy trust",
    key=("school_id", "join_date"),
    columns=(
        Column("school_id", "string", False, "School URN."),
        Column("trust_id", "string", False, "Trust (MAT) identifier."),
        Column("trust_name", "string", False, "Trust name."),
        Column("join_date", "date", False, "Date the school joined the trust."),
        Column("leave_date", "date", True, "Date the school left the trust; null while still a member."),
    ),
)

PUPILS = TableSchema(
    name="pupils",
    grain="one row per pupil per key stage cohort (the school census characteristics)",
    key=("pupil_id", "key_stage"),
    columns=(
        Column("pupil_id", "string", False, "Pupil identifier (pseudonymised in outputs)."),
        Column("key_stage", "string", False, "Cohort: ks2 or ks4."),
        Column("school_id", "string", False, "School URN at the time of the key stage assessment."),
        Column("gender", "string", False, "F or M."),
        Column("date_of_birth", "date", False, "Date of birth."),
        Column("sen", "string", False, "Special educational needs: N none, K SEN support, E EHC plan/statement."),
        Column("ethnicity", "string", False, "Ethnic group code, one of the 19 census groups (see conf reference)."),
        Column("fsm", "boolean", False, "Eligible for free school meals."),
        Column("disadvantaged", "boolean", False, "FSM in the last six years or looked after (pupil premium)."),
        Column("eal", "boolean", False, "First language other than English."),
        Column("mobile", "boolean", False, "Joined the school at a non-standard time in the last two years."),
        Column("ever_in_care", "boolean", False, "Ever looked after while at this school."),
        Column("idaci", "double", False, "IDACI deprivation score of the home postcode, 0 to 1."),
        Column("arrived_from_overseas", "boolean", False, "Arrived in England from overseas."),
        Column("country_english_official", "boolean", True, "Country of arrival has English as an official language (null if not from overseas)."),
        Column("first_admission_date", "date", False, "Date first admitted to an English school."),
    ),
)

_KS2_SUBJECT_TEST_COLUMNS = tuple(
    col
    for subject in ("reading", "maths")
    for col in (
        Column(f"{subject}_scaled_score", "int", True, f"KS2 {subject} test scaled score 80-120; null if not awarded."),
        Column(f"{subject}_test_code", "string", False, f"KS2 {subject} test outcome: S scaled score, N sat but no scaled score, B below the standard of the test, A absent, D disapplied, M missing, U unable to access, Q maladministration."),
        Column(f"{subject}_ta", "string", True, f"KS2 {subject} teacher assessment (EXS, HNM, PKG, PKE, PKF, BLW, A, D ...)."),
        Column(f"{subject}_pscale", "string", True, f"P-scale or NOTSEN accompanying a BLW {subject} assessment."),
    )
)

KS2_RESULTS = TableSchema(
    name="ks2_results",
    grain="one row per pupil in the KS2 cohort",
    key=("pupil_id",),
    columns=(
        Column("pupil_id", "string", False, "Pupil identifier."),
        Column("ks1_reading", "string", True, "KS1 reading teacher assessment (levels era W,1,2C,2B,2A,3,4+,P1-P8; framework era PKF,WTS,EXS,GDS); null if no KS1 result."),
        Column("ks1_writing", "string", True, "KS1 writing teacher assessment; null if no KS1 result."),
        Column("ks1_maths", "string", True, "KS1 maths teacher assessment; null if no KS1 result."),
        *_KS2_SUBJECT_TEST_COLUMNS,
        Column("writing_ta", "string", False, "KS2 writing teacher assessment: GDS, EXS, WTS, PKG, PKE, PKF, BLW, A, D, M, Q."),
        Column("writing_pscale", "string", True, "P-scale or NOTSEN accompanying a BLW writing assessment."),
    ),
)

_A8_SLOTS = ("english", "maths", "ebacc_1", "ebacc_2", "ebacc_3", "open_1", "open_2", "open_3")

KS4_RESULTS = TableSchema(
    name="ks4_results",
    grain="one row per pupil in the KS4 cohort",
    key=("pupil_id",),
    columns=(
        Column("pupil_id", "string", False, "Pupil identifier."),
        *(
            col
            for subject in ("reading", "maths")
            for col in (
                Column(f"ks2_{subject}_scaled_score", "int", True, f"KS2 {subject} scaled score 80-120 (prior attainment); null if none."),
                Column(f"ks2_{subject}_test_code", "string", True, f"KS2 {subject} test outcome code (as in ks2_results); null if no KS2 record."),
                Column(f"ks2_{subject}_ta", "string", True, f"KS2 {subject} teacher assessment, for nominal values."),
                Column(f"ks2_{subject}_pscale", "string", True, f"P-scale or NOTSEN accompanying BLW in {subject}."),
            )
        ),
        *(
            Column(f"{slot}_points", "double", False, f"Attainment 8 {slot.replace('_', ' ')} slot points, 0-9 (0 = slot not filled).")
            for slot in _A8_SLOTS
        ),
        Column("science_points", "double", True, "Best EBacc science points (null if not entered), for subject value added."),
        Column("humanities_points", "double", True, "Best EBacc humanities points (null if not entered)."),
        Column("languages_points", "double", True, "Best EBacc languages points (null if not entered)."),
    ),
)
A8_SLOT_COLUMNS = tuple(f"{slot}_points" for slot in _A8_SLOTS)

AMENDMENTS = TableSchema(
    name="amendments",
    grain="one row per checking-exercise amendment",
    key=("pupil_id", "key_stage", "action", "field"),
    columns=(
        Column("pupil_id", "string", False, "Pupil the amendment applies to."),
        Column("key_stage", "string", False, "ks2 or ks4."),
        Column("action", "string", False, "remove (pupil taken off roll), add (pupil added at checking; present in the input files but only counted in the validated stage) or correct (a result corrected)."),
        Column("field", "string", True, "For correct: the results column corrected."),
        Column("new_value", "string", True, "For correct: the corrected value, as text."),
        Column("reason", "string", False, "Why the amendment was made."),
    ),
)

INPUT_TABLES = {t.name: t for t in (SCHOOLS, TRUST_MEMBERSHIP, PUPILS, KS2_RESULTS, KS4_RESULTS, AMENDMENTS)}
RESULTS_TABLE = {"ks2": KS2_RESULTS, "ks4": KS4_RESULTS}

# ----------------------------------------------------------------------------- outputs

PSEUDONYM_RULE = (
    "HMAC-SHA256 of the input pupil_id (UTF-8) keyed with the release's pseudonym key, first 32 hex digits; "
    "the same pupil has the same pseudonym in every table, stage and year released with the same key"
)


def pupil_pseudonym_column(nullable: bool, description: str) -> Column:
    """An output column holding a pupil's pseudonym (valueadded.io.pseudonym), never the input id."""
    return Column("pupil_id", "string", nullable, f"{description} Pseudonymised: {PSEUDONYM_RULE}.", identifies_pupil=True)


# Contextual value added columns of pupil_results, filled by the CVA stage (valueadded.cva.stage).
CVA_PUPIL_COLUMNS = (
    Column("cva_model", "string", True, "CVA model the pupil is in (e.g. ks4_mainstream, special; conf/models/); null when not in a CVA model."),
    Column("cva_exclusion_reason", "string", True, "Why the pupil is not in a CVA model (null when in one): the pupil's exclusion_reason, no_prior_attainment, no_outcome, or model_not_fitted (see cva_model.message)."),
    Column("cva_outcome", "double", True, "The outcome the CVA model explains: Attainment 8 (KS4) or the mean of the KS2 reading and maths scores (KS2)."),
    Column("cva_prior_attainment", "double", True, "CVA prediction, stage 1: constant plus prior attainment terms (APS, its square, subject differences)."),
    Column("cva_characteristics", "double", True, "CVA prediction, stage 2: pupil characteristics and their interactions."),
    Column("cva_school_level", "double", True, "CVA prediction, stage 3: school mean and SD of prior attainment (0 in models without them)."),
    Column("cva_range_adjustment", "double", True, "CVA prediction, stage 4: change that keeps the prediction in the outcome's valid range (0 inside it)."),
    Column("cva_prediction", "double", True, "CVA prediction: the sum of the four stages."),
    Column("cva_residual", "double", True, "Pupil CVA score: cva_outcome - cva_prediction."),
)

PUPIL_RESULTS = TableSchema(
    name="pupil_results",
    grain="one row per pupil in the key stage cohort who passed row validation",
    version=3,  # 2: CVA columns appended; 3: pupil_id pseudonymised
    description="Restricted pupil-level table: every accepted pupil with inclusion flag and reason.",
    partition_by=PARTITION_NAMES,
    audience="restricted",
    key=("academic_year", "key_stage", "data_stage", "pupil_id"),
    columns=(
        *PARTITION_COLUMNS,
        pupil_pseudonym_column(False, "The pupil."),
        Column("school_id", "string", False, "School URN."),
        Column("trust_id", "string", True, "Trust the school belongs to at the end of the academic year, if any."),
        Column("la_code", "string", False, "Local authority code of the school."),
        Column("region_code", "string", False, "Region code of the school."),
        Column("school_provision", "string", False, "mainstream or special."),
        Column("school_sector", "string", False, "state_funded or independent."),
        Column("gender", "string", False, "F or M."),
        Column("sen", "string", False, "N, K or E."),
        Column("ethnicity", "string", False, "Ethnic group code."),
        Column("fsm", "boolean", False, "Free school meals."),
        Column("disadvantaged", "boolean", False, "Disadvantaged (pupil premium)."),
        Column("eal", "boolean", False, "English as an additional language."),
        Column("mobile", "boolean", False, "Joined at a non-standard time."),
        Column("ever_in_care", "boolean", False, "Ever looked after at this school."),
        Column("idaci", "double", False, "IDACI score."),
        Column("age_in_months", "int", False, "Age within the year group in months: 11 for a September birthday (oldest) down to 0 for August (youngest)."),
        Column("discountable", "boolean", False, "Recent arrival from overseas with EAL from a non-English-speaking country, first admitted on or after the start of the first year of the key stage's last two years."),
        Column("amended", "boolean", False, "A checking-exercise correction was applied to this pupil's results (validated stage only)."),
        Column("included", "boolean", False, "Counted in the school's measures for this data stage."),
        Column("exclusion_reason", "string", True, "Why not included (null when included)."),
        Column("prior_attainment", "double", True, "Prior attainment score: KS1 average point score (KS2) or KS2 average scaled score (KS4); null when the pupil has none, or before the key stage's measures run."),
        Column("prior_attainment_group", "int", True, "Prior attainment group (PAG) from the year's boundaries in conf/; null when no prior attainment."),
        *CVA_PUPIL_COLUMNS,
    ),
)

PUPIL_PROGRESS = TableSchema(
    name="pupil_progress",
    grain="one row per pupil per progress subject (KS2 reading, writing, maths; KS4 Progress 8 and its elements)",
    version=2,  # 2: pupil_id pseudonymised
    description="Restricted: each pupil's progress in each subject, with the estimate it was measured against.",
    partition_by=PARTITION_NAMES,
    audience="restricted",
    key=("academic_year", "key_stage", "data_stage", "pupil_id", "subject"),
    columns=(
        *PARTITION_COLUMNS,
        pupil_pseudonym_column(False, "The pupil (joins pupil_results)."),
        Column("school_id", "string", False, "School URN."),
        Column("subject", "string", False, "Subject or Progress 8 element."),
        Column("prior_attainment_group", "int", True, "Prior attainment group."),
        Column("outcome", "double", True, "The outcome measured: scaled score or nominal score (KS2), Attainment 8 or element points (KS4)."),
        Column("in_progress", "boolean", False, "The pupil has a progress score in this subject."),
        Column("in_national", "boolean", False, "The pupil counts towards the national estimates (state-funded mainstream)."),
        Column("exclusion_reason", "string", True, "Why the pupil has no progress score in this subject (null when in_progress)."),
        Column("estimate", "double", True, "National estimate for the pupil's group and subject."),
        Column("progress", "double", True, "(outcome - estimate) / divisor, before the extreme-negative adjustment."),
        Column("capped", "boolean", False, "The score was raised to the group's cap (extreme negative): the pupil's z in their group is below the subject's z*. A pupil tied with the z* pupil is at the cap already and is not capped."),
        Column("adjusted_progress", "double", True, "Progress after the extreme-negative adjustment; used for school scores."),
    ),
)

# The national estimates as the key stage measures compute or apply them, before
# suppression. The measure modules import this schema as NATIONAL_ESTIMATES (below).
NATIONAL_ESTIMATES_UNSUPPRESSED = TableSchema(
    name="national_estimates_unsuppressed",
    grain="one row per subject per prior attainment group",
    description=(
        "Restricted: the national estimates pupils are measured against, with the extreme-negative caps, "
        "as computed (or applied), every group shown. The published `national_estimates` is this table "
        "with the figures of groups of fewer than the minimum pupils withheld."
    ),
    partition_by=PARTITION_NAMES,
    audience="restricted",
    key=("academic_year", "key_stage", "data_stage", "subject", "prior_attainment_group"),
    columns=(
        *PARTITION_COLUMNS,
        Column("subject", "string", False, "Subject or Progress 8 element."),
        Column("prior_attainment_group", "int", False, "Prior attainment group."),
        Column("source", "string", False, "computed (from this run's pupils) or the published table applied (e.g. published:dfe-ks4-2024)."),
        Column("n", "int", True, "Pupils behind a computed estimate (state-funded mainstream, included); null for a published one."),
        Column("estimate", "double", False, "Mean (or legacy median) outcome of the group."),
        Column("outcome_sd", "double", True, "Standard deviation of the group's outcomes."),
        Column("progress_mean", "double", True, "Mean pupil progress in the group (0 for computed mean estimates)."),
        Column("progress_sd", "double", True, "Standard deviation of pupil progress in the group."),
        Column("cap", "double", True, "Lowest adjusted progress score in the group: mean + z* x SD."),
    ),
)
# Transitional name: estimates.py, ks2.py and ks4.py import the computed shape as
# NATIONAL_ESTIMATES; rename their imports to NATIONAL_ESTIMATES_UNSUPPRESSED, then drop this.
NATIONAL_ESTIMATES = NATIONAL_ESTIMATES_UNSUPPRESSED

SUPPRESSION_COLUMNS = (
    Column("suppressed", "boolean", False, "The row's figures are withheld: they rest on fewer pupils than the minimum (conf/rollup: suppression.min_pupils, 6)."),
    Column("suppression_reason", "string", True, "Why the figures are withheld (null when shown): below_minimum_pupils (fewer pupils than the minimum) or secondary (withheld so that a withheld subgroup's figure cannot be worked out from the unit's other figures)."),
)

PUBLISHED_NATIONAL_ESTIMATES = TableSchema(
    name="national_estimates",
    grain="one row per subject per prior attainment group",
    version=2,  # 2: suppression columns; figures of groups of fewer than the minimum pupils withheld
    description=(
        "The national estimates pupils are measured against, with the extreme-negative caps. A computed "
        "group's figures, or a published table's caps (computed from this run's pupils), are withheld when "
        "fewer than the minimum pupils are behind them; restricted/national_estimates_unsuppressed keeps them."
    ),
    partition_by=PARTITION_NAMES,
    audience="published",
    key=("academic_year", "key_stage", "data_stage", "subject", "prior_attainment_group"),
    suppressible=("n", "estimate", "outcome_sd", "progress_mean", "progress_sd", "cap"),
    columns=(
        *NATIONAL_ESTIMATES_UNSUPPRESSED.columns[:7],
        Column("estimate", "double", True, "Mean (or legacy median) outcome of the group; null when withheld."),
        *NATIONAL_ESTIMATES_UNSUPPRESSED.columns[8:],
        *SUPPRESSION_COLUMNS,
    ),
)

# The school figures as the key stage measures and the CVA stage compute them. The
# measure modules import this schema as SCHOOL_MEASURES (below).
SCHOOL_SCORES = TableSchema(
    name="school_scores",
    grain="one row per school per measure",
    description=(
        "Restricted: school progress scores with 95% intervals and bands, attainment measures and CVA, as "
        "computed, before suppression. The roll-up stage builds the published `school_measures` from it."
    ),
    partition_by=PARTITION_NAMES,
    audience="restricted",
    key=("academic_year", "key_stage", "data_stage", "school_id", "measure"),
    columns=(
        *PARTITION_COLUMNS,
        Column("school_id", "string", False, "School URN."),
        Column("measure", "string", False, "Measure name, e.g. progress_reading, progress_8, pct_expected_rwm, average_scaled_score_maths, cva."),
        Column("n", "int", False, "Pupils behind the figure."),
        Column("score", "double", True, "The school's figure: mean adjusted progress, a percentage, an average, or shrunken CVA."),
        Column("lower", "double", True, "Lower limit of the 95% confidence interval (progress measures and CVA)."),
        Column("upper", "double", True, "Upper limit of the 95% confidence interval (progress measures and CVA)."),
        Column("band", "string", True, "well_above, above, average, below or well_below (progress measures)."),
    ),
)
# Transitional name: estimates.py, ks2.py, ks4.py and cva/stage.py import the computed
# shape as SCHOOL_MEASURES; rename their imports to SCHOOL_SCORES, then drop this.
SCHOOL_MEASURES = SCHOOL_SCORES

CVA_MODEL = TableSchema(
    name="cva_model",
    grain="one row per CVA model per term (one row with a null term for a model that was not fitted)",
    description=(
        "Contextual value added models: coefficients with standard errors, and on every row the model's "
        "variance components, REML criterion, size, boundary and convergence flags and timings."
    ),
    partition_by=PARTITION_NAMES,
    audience="published",
    key=("academic_year", "key_stage", "data_stage", "model", "term"),
    columns=(
        *PARTITION_COLUMNS,
        Column("model", "string", False, "Model name (conf/models/<name>.yaml; special inherits the key stage's outcome)."),
        Column("population", "string", False, "Schools the model is fitted on: mainstream or special (state-funded, included pupils)."),
        Column("spec_file", "string", False, "The model specification file, relative to the repository's conf/ folder."),
        Column("status", "string", False, "fitted, or not_fitted (the model could not be estimated; see message)."),
        Column("message", "string", True, "Why a model was not fitted (naming the terms), or a note on terms dropped because no pupil has them (cva_empty_terms: drop) and on a boundary fit; null otherwise."),
        Column("term", "string", True, "Design term (intercept first); null on a not_fitted model's row."),
        Column("term_stage", "string", True, "Stage of the prediction the term belongs to: prior_attainment, characteristics or school_level."),
        Column("term_mean", "double", True, "Mean of the term over the model's pupils."),
        Column("estimate", "double", True, "Coefficient (REML / GLS estimate); null for a term dropped because no pupil has it."),
        Column("std_error", "double", True, "Standard error of the coefficient: square root of the diagonal of (X'V^-1 X)^-1 at the REML variance components."),
        Column("sigma2_school", "double", True, "Between-school variance of the random intercept (REML); 0 on the boundary."),
        Column("sigma2_pupil", "double", True, "Within-school (pupil) residual variance (REML)."),
        Column("reml_criterion", "double", True, "-2 x restricted log-likelihood at the optimum (lme4's REMLcrit)."),
        Column("n_pupils", "int", False, "Pupils in the model."),
        Column("n_schools", "int", False, "Schools in the model."),
        Column("boundary", "boolean", True, "The school variance was estimated as exactly 0: the fit is OLS and every school's CVA is the centre."),
        Column("converged", "boolean", True, "The REML optimiser converged."),
        Column("gather_seconds", "double", True, "Wall seconds to gather the sufficient statistics with Spark."),
        Column("fit_seconds", "double", True, "Wall seconds of the REML fit on the driver."),
    ),
)

REJECTED_ROWS = TableSchema(
    name="rejected_rows",
    grain="one row per input row set aside by validation",
    version=2,  # 2: pupil_id pseudonymised, also inside row_json
    description="Input rows that broke a row rule, with the first rule broken and all rules broken.",
    partition_by=PARTITION_NAMES,
    audience="restricted",
    columns=(
        *PARTITION_COLUMNS,
        Column("source_table", "string", False, "Input table the row came from."),
        pupil_pseudonym_column(True, "The row's pupil, where the table has one (null when the table has none or the row's pupil_id is null)."),
        Column("school_id", "string", True, "School, where the table has one."),
        Column("reason_code", "string", False, "First rule the row broke (see docs/validation.md)."),
        Column("all_reasons", "string", False, "Every rule the row broke, comma-separated."),
        Column(
            "row_json", "string", False,
            f"The row as it was read, as JSON, except that the value of its pupil_id is the pupil's pseudonym ({PSEUDONYM_RULE}).",
            json_pupil_keys=("pupil_id",),
        ),
    ),
)

RUNS = TableSchema(
    name="runs",
    grain="one row per release run (appended, never replaced)",
    version=2,  # 2: pseudonym_key_fingerprint
    description="Run log: provenance, reconciliation and timings of every run, successful or not.",
    partition_by=PARTITION_NAMES,
    audience="restricted",
    columns=(
        *PARTITION_COLUMNS,
        Column("run_id", "string", False, "Unique run identifier."),
        Column("command", "string", False, "The command line that started the run."),
        Column("config_json", "string", False, "The resolved configuration, as JSON."),
        Column("input_fingerprints_json", "string", False, "SHA-256 of every input file, as JSON."),
        Column(
            "pseudonym_key_fingerprint", "string", False,
            "Identifies the key the pupil pseudonyms were computed with: HMAC-SHA256(key, a fixed label), first 16 hex "
            "digits. Runs with the same fingerprint used the same key; the key itself is never recorded.",
        ),
        Column("code_version", "string", False, "Package version and git commit."),
        Column("started_at", "timestamp", False, "Start time (UTC)."),
        Column("finished_at", "timestamp", False, "End time (UTC)."),
        Column("status", "string", False, "succeeded or failed."),
        Column("error", "string", True, "Error message of a failed run."),
        Column("row_counts_json", "string", False, "Rows in, rows out and reconciliation counts per table, as JSON."),
        Column("stage_timings_json", "string", False, "Wall seconds per stage, as JSON."),
        Column("table_versions_json", "string", False, "Delta version of every table this run wrote, as JSON."),
    ),
)

# ----------------------------------------------------------------------------- roll-ups (valueadded.rollup)

_FIGURE_COLUMNS = (
    Column("n", "int", True, "Pupils behind the figure; null when withheld."),
    Column("score", "double", True, "The figure: the (weighted) mean of the measure's column of its pupils in pupil_measures; null when withheld."),
    Column("lower", "double", True, "Lower limit of the 95% confidence interval (progress measures and CVA); null when withheld."),
    Column("upper", "double", True, "Upper limit of the 95% confidence interval (progress measures and CVA); null when withheld."),
    Column("band", "string", True, "well_above, above, average, below or well_below (progress measures; the school bands' rule); null when withheld."),
)
_NATIONAL_SCORE = Column("national_score", "double", True, "The national figure of the same measure (and subgroup), for benchmarking; null when national_measures / subgroup_measures withhold it.")
_TREND_COLUMNS = (
    Column("last_year_score", "double", True, "The same figure last year (history_data_stage partition of academic_year - 1); null when absent or withheld."),
    Column("change_from_last_year", "double", True, "score - last_year_score; null when either is absent or withheld."),
    Column("three_year_average", "double", True, "Pupil-weighted mean of this year's and the two previous years' figures, when all three exist; null otherwise or when withheld."),
    Column("trend_suppression_reason", "string", True, "withheld_in_an_earlier_year when a year the trend columns use was withheld in that year's tables (fewer than the minimum pupils, or secondary), so they are withheld; null otherwise."),
)
_FIGURE_NAMES = ("n", "score", "lower", "upper", "band")
_TREND_NAMES = ("last_year_score", "change_from_last_year", "three_year_average")
TREND_SUPPRESSIBLE = _TREND_NAMES

TRUST_RULE = (
    "A school counts towards its trust's figures when it is a state-funded mainstream school in the trust on "
    "31 August of the academic year whose current spell in the trust covers at least `trusts.min_full_years` (3) "
    "whole academic years (1 September to 31 August) up to and including the release year: for 2024 (2023/24), "
    "joined on or before 1 September 2021. A trust has a figure for a measure when at least `trusts.min_schools` (3) "
    "counted schools have pupils in it. The figure is the mean of the counted schools' pupils' values, each pupil "
    "weighted by the school's time-in-trust weight (`trusts.time_in_trust_weights`: 3 for 3 full years, 4 for 4 or "
    "more), which is the pupil- and time-weighted mean of the schools' figures. Interval: score +/- 1.96 x national "
    "SD x sqrt(sum of squared weights) / sum of weights."
)

PUBLISHED_SCHOOL_MEASURES = TableSchema(
    name="school_measures",
    grain="one row per school per measure",
    version=2,  # 2: suppression, national figure, trust, comparisons, trends
    description=(
        "School figures for dashboards: progress scores with 95% intervals and bands, attainment and CVA, "
        "benchmarked against the national figure and the school's trust, with the attainment-against-progress "
        "quadrant, the position among similar schools and trends. Figures resting on fewer than the minimum pupils "
        "are withheld (restricted/school_scores keeps them). Drill-down: the pupils behind a row are the "
        "restricted/pupil_measures rows of the same partition and school_id with the measure's column not null (pupil_id joins "
        "pupil_results)."
    ),
    partition_by=PARTITION_NAMES,
    audience="published",
    key=("academic_year", "key_stage", "data_stage", "school_id", "measure"),
    suppressible=(*_FIGURE_NAMES, "rank_in_trust", "quadrant", "similar_schools_rank", *_TREND_NAMES),
    columns=(
        *PARTITION_COLUMNS,
        Column("school_id", "string", False, "School URN."),
        Column("measure", "string", False, "Measure name, e.g. progress_reading, progress_8, pct_expected_rwm, attainment_8, cva."),
        _FIGURE_COLUMNS[0],
        Column("score", "double", True, "The school's figure as in school_scores: mean adjusted progress, a percentage, an average, or shrunken CVA; null when withheld."),
        *_FIGURE_COLUMNS[2:],
        _NATIONAL_SCORE,
        Column("la_code", "string", False, "Local authority of the school."),
        Column("region_code", "string", False, "Region of the school."),
        Column("trust_id", "string", True, "Trust the school is in on 31 August of the academic year, if any."),
        Column("in_trust_figure", "boolean", False, "The school counts towards its trust's figures (state-funded mainstream, at least 3 full academic years in the trust)."),
        Column("trust_score", "double", True, "The trust's figure for the measure (trust_measures), when the trust has one and it is shown."),
        Column("rank_in_trust", "int", True, "Rank of the school's figure among its trust's schools with a shown figure (1 = highest; ties share a rank)."),
        Column("schools_ranked_in_trust", "int", True, "Schools of the trust with a shown figure for the measure."),
        Column("quadrant", "string", True, "Progress and CVA measures: high_attainment_high_progress, high_attainment_low_progress, low_attainment_high_progress or low_attainment_low_progress; high = at or above the national figure."),
        Column("quadrant_attainment_measure", "string", True, "The attainment measure the quadrant compares with (conf/rollup: comparisons.quadrants)."),
        Column("similar_schools_group", "string", False, "The school's similar-schools group: phase, provision, cohort size band and % disadvantaged band (conf/rollup: comparisons.similar_schools)."),
        Column("similar_schools_rank", "int", True, "Rank of the figure among the group's schools with a shown figure (1 = highest; ties share a rank)."),
        Column("similar_schools_count", "int", True, "Schools of the group with a shown figure for the measure."),
        *_TREND_COLUMNS,
        *SUPPRESSION_COLUMNS,
    ),
)

TRUST_MEASURES = TableSchema(
    name="trust_measures",
    grain="one row per trust per measure (trusts with a school with pupils in the measure)",
    description="Multi-academy trust figures. " + TRUST_RULE + " Drill-down: restricted/pupil_measures rows of the trust_id with a trust_weight and the measure's column not null.",
    partition_by=PARTITION_NAMES,
    audience="published",
    key=("academic_year", "key_stage", "data_stage", "trust_id", "measure"),
    suppressible=(*_FIGURE_NAMES, "weighted_pupils", *_TREND_NAMES),
    columns=(
        *PARTITION_COLUMNS,
        Column("trust_id", "string", False, "Trust identifier."),
        Column("trust_name", "string", False, "Trust name."),
        Column("measure", "string", False, "Measure name."),
        Column("eligible", "boolean", False, "The trust has a figure: at least the minimum number of counted schools have pupils in the measure."),
        Column("eligibility_reason", "string", True, "too_few_counted_schools when not eligible; null otherwise."),
        Column("schools_in_trust", "int", False, "Schools of the trust (on 31 August) with pupils in the measure."),
        Column("schools_counted", "int", False, "Of them, schools that count towards the trust's figures."),
        *_FIGURE_COLUMNS,
        Column("weighted_pupils", "double", True, "Sum of the counted pupils' time-in-trust weights; null when withheld."),
        _NATIONAL_SCORE,
        *_TREND_COLUMNS,
        *SUPPRESSION_COLUMNS,
    ),
)

_AREA_COLUMNS = (
    Column("schools", "int", True, "Schools with pupils in the measure; null when withheld (n >= schools, so it would bound a withheld n)."),
    *_FIGURE_COLUMNS,
)

LA_MEASURES = TableSchema(
    name="la_measures",
    grain="one row per local authority per measure",
    description=(
        "Local authority figures: the mean of the pupil values of every state-funded school of the authority "
        "(mainstream and special). Drill-down: restricted/pupil_measures rows of the la_code with the measure's column not null."
    ),
    partition_by=PARTITION_NAMES,
    audience="published",
    key=("academic_year", "key_stage", "data_stage", "la_code", "measure"),
    suppressible=("schools", *_FIGURE_NAMES, *_TREND_NAMES),
    columns=(
        *PARTITION_COLUMNS,
        Column("la_code", "string", False, "Local authority code."),
        Column("la_name", "string", False, "Local authority name."),
        Column("region_code", "string", False, "Region of the authority."),
        Column("measure", "string", False, "Measure name."),
        *_AREA_COLUMNS,
        _NATIONAL_SCORE,
        *_TREND_COLUMNS,
        *SUPPRESSION_COLUMNS,
    ),
)

REGION_MEASURES = TableSchema(
    name="region_measures",
    grain="one row per region per measure",
    description="Region figures: the mean of the pupil values of every state-funded school of the region. Drill-down: restricted/pupil_measures rows of the region_code with the measure's column not null.",
    partition_by=PARTITION_NAMES,
    audience="published",
    key=("academic_year", "key_stage", "data_stage", "region_code", "measure"),
    suppressible=("schools", *_FIGURE_NAMES, *_TREND_NAMES),
    columns=(
        *PARTITION_COLUMNS,
        Column("region_code", "string", False, "Region code."),
        Column("region_name", "string", False, "Region name."),
        Column("measure", "string", False, "Measure name."),
        *_AREA_COLUMNS,
        _NATIONAL_SCORE,
        *_TREND_COLUMNS,
        *SUPPRESSION_COLUMNS,
    ),
)

NATIONAL_MEASURES = TableSchema(
    name="national_measures",
    grain="one row per measure",
    description=(
        "National figures: the mean of the pupil values of every state-funded school (mainstream and special, so "
        "national progress differs slightly from 0, the state-funded mainstream mean). Drill-down: every "
        "restricted/pupil_measures row of the partition with the measure's column not null."
    ),
    partition_by=PARTITION_NAMES,
    audience="published",
    key=("academic_year", "key_stage", "data_stage", "measure"),
    suppressible=("schools", *_FIGURE_NAMES, *_TREND_NAMES),
    columns=(
        *PARTITION_COLUMNS,
        Column("measure", "string", False, "Measure name."),
        *_AREA_COLUMNS,
        *_TREND_COLUMNS,
        *SUPPRESSION_COLUMNS,
    ),
)

SUBGROUP_MEASURES = TableSchema(
    name="subgroup_measures",
    grain="one row per level per unit per subgroup value per measure (values with pupils in the measure)",
    description=(
        "Figures for pupil subgroups at every level. A school, local authority, region or national subgroup figure "
        "is the mean of its pupils' values (CVA: centre + mean pupil CVA, not shrunk); a trust's uses the trust rule "
        "and weights. Drill-down: restricted/pupil_measures rows of the partition with the measure's column not null, "
        "whose level column (school_id, trust_id with a trust_weight, la_code, region_code; every row for national) "
        "equals unit_id and whose column named by `subgroup` equals subgroup_value."
    ),
    partition_by=PARTITION_NAMES,
    audience="published",
    key=("academic_year", "key_stage", "data_stage", "level", "unit_id", "subgroup", "subgroup_value", "measure"),
    suppressible=("schools", *_FIGURE_NAMES, *_TREND_NAMES),
    columns=(
        *PARTITION_COLUMNS,
        Column("level", "string", False, "school, trust, la, region or national."),
        Column("unit_id", "string", False, "The school URN, trust id, LA code or region code; national for the nation."),
        Column("subgroup", "string", False, "Subgroup dimension: disadvantaged, fsm, sen, eal, gender, ethnic_group, prior_attainment_band or high_needs (a pupil_measures column)."),
        Column("subgroup_value", "string", False, "yes/no; sen none, support or plan; gender female or male; the major ethnic group; band low, middle, high or none."),
        Column("measure", "string", False, "Measure name."),
        *_AREA_COLUMNS,
        Column("national_score", "double", True, "The national figure of the same subgroup and measure; null when withheld at national level."),
        *_TREND_COLUMNS,
        *SUPPRESSION_COLUMNS,
    ),
)

IDENTIFIED_SCHOOLS = TableSchema(
    name="identified_schools",
    grain="one row per school per subgroup identified this year, or identified last year",
    description=(
        "Schools with a subgroup among the lowest-performing eligible subgroups nationally on the chosen measure "
        "(conf/rollup: identification). Eligible subgroups: the configured subgroups of every school with at least "
        "identification.min_pupils pupils in the measure. Percentile = 100 x rank / eligible_subgroups, rank 1 = "
        "lowest score, tied scores sharing the lower rank. Status: identified (percentile <= lowest_percent, not "
        "identified last year), continuing (identified last year, percentile <= exit_above_percent), exited "
        "(identified last year, percentile above exit_above_percent), continuing_not_assessed (identified last year, "
        "not eligible this year: too few pupils). Last year = the history_data_stage partition of academic_year - 1, "
        "when present."
    ),
    partition_by=PARTITION_NAMES,
    audience="published",
    key=("academic_year", "key_stage", "data_stage", "school_id", "measure", "subgroup", "subgroup_value"),
    suppressible=("n", "score", "rank", "percentile"),
    columns=(
        *PARTITION_COLUMNS,
        Column("school_id", "string", False, "School URN."),
        Column("measure", "string", False, "The measure subgroups are compared on."),
        Column("subgroup", "string", False, "Subgroup dimension."),
        Column("subgroup_value", "string", False, "Subgroup value."),
        Column("n", "int", True, "Pupils of the subgroup in the measure; null when withheld."),
        Column("score", "double", True, "The subgroup's figure; null when withheld."),
        Column("rank", "int", True, "Rank among eligible subgroups nationally, 1 = lowest; null when not eligible."),
        Column("eligible_subgroups", "int", False, "Eligible subgroups nationally."),
        Column("percentile", "double", True, "100 x rank / eligible_subgroups; null when not eligible."),
        Column("lowest_cutoff_score", "double", True, "Highest shown score with a percentile at most lowest_percent."),
        Column("exit_cutoff_score", "double", True, "Highest shown score with a percentile at most exit_above_percent."),
        Column("identified_last_year", "boolean", True, "The school was identified for this subgroup last year; null when last year's table is absent."),
        Column("status", "string", False, "identified, continuing, exited or continuing_not_assessed."),
        Column("identified", "boolean", False, "Identified this year: identified, continuing or continuing_not_assessed."),
        *SUPPRESSION_COLUMNS,
    ),
)

UNSUPPRESSED_MEASURES = TableSchema(
    name="unsuppressed_measures",
    grain="one row per level per unit per subgroup value per measure",
    description=(
        "Restricted: every figure of school_measures, trust_measures (eligible trusts), la_measures, region_measures, "
        "national_measures and subgroup_measures before suppression (subgroup all for all pupils). Trends and last "
        "year's figures are read from here."
    ),
    partition_by=PARTITION_NAMES,
    audience="restricted",
    key=("academic_year", "key_stage", "data_stage", "level", "unit_id", "subgroup", "subgroup_value", "measure"),
    columns=(
        *PARTITION_COLUMNS,
        Column("level", "string", False, "school, trust, la, region or national."),
        Column("unit_id", "string", False, "School URN, trust id, LA code, region code, or national."),
        Column("subgroup", "string", False, "all, or the subgroup dimension."),
        Column("subgroup_value", "string", False, "all, or the subgroup value."),
        Column("measure", "string", False, "Measure name."),
        Column("schools", "int", False, "Schools with pupils in the figure."),
        Column("n", "int", False, "Pupils behind the figure."),
        Column("weighted_pupils", "double", False, "Sum of the pupils' weights (time-in-trust weights for trusts; n elsewhere)."),
        Column("score", "double", True, "The figure."),
        Column("lower", "double", True, "Lower limit of the 95% interval."),
        Column("upper", "double", True, "Upper limit of the 95% interval."),
        Column("band", "string", True, "Band (progress measures)."),
        Column("national_score", "double", True, "The national figure of the same subgroup and measure."),
        Column("last_year_n", "int", True, "Pupils behind last year's figure."),
        Column("last_year_score", "double", True, "Last year's figure."),
        Column("change_from_last_year", "double", True, "score - last_year_score."),
        Column("three_year_average", "double", True, "Pupil-weighted mean of the last three years' figures, when all three exist."),
        Column("three_year_min_n", "int", True, "Fewest pupils behind any of the three years' figures."),
    ),
)

def _measure_column(name: str) -> Column:
    kind = {m.name: m.kind for measures in MEASURES.values() for m in measures}[name]
    meaning = {
        "progress": "adjusted progress (pupil_progress.adjusted_progress)",
        "attainment": "100 or 0 (% reaching a standard), or the scaled score or Attainment 8 (averages)",
        "cva": "the CVA model's centre (100 or 1000) + the pupil's CVA score",
    }[kind]
    return Column(name, "double", True, f"The pupil's value in {name}: {meaning}; null when the pupil is not in the measure (or it is not this key stage's).")


PUPIL_MEASURES = TableSchema(
    name="pupil_measures",
    grain="one row per pupil of the pupil table",
    description=(
        "Restricted drill-down: each pupil's value in each measure, with the columns that place the pupil in every "
        "published figure. Every school, trust, LA, region, national and subgroup figure is the (weighted) mean of a "
        "measure's column over its pupils here: e.g. the pupils behind a school's disadvantaged progress_8 are the rows "
        "with that school_id, disadvantaged = yes and progress_8 not null; a trust's figure weights them by "
        "trust_weight. pupil_id joins pupil_results. Subgroup columns are derived from pupil_results as each describes."
    ),
    version=2,  # 2: pupil_id pseudonymised
    partition_by=PARTITION_NAMES,
    audience="restricted",
    key=("academic_year", "key_stage", "data_stage", "pupil_id"),
    columns=(
        *PARTITION_COLUMNS,
        pupil_pseudonym_column(False, "The pupil (joins pupil_results)."),
        Column("school_id", "string", False, "School URN."),
        Column("trust_id", "string", True, "Trust of the school on 31 August, if any."),
        Column("trust_weight", "double", True, "The school's time-in-trust weight when it counts towards the trust's figures; null otherwise."),
        Column("la_code", "string", False, "Local authority of the school."),
        Column("region_code", "string", False, "Region of the school."),
        Column("disadvantaged", "string", False, "yes/no: pupil_results.disadvantaged."),
        Column("fsm", "string", False, "yes/no: pupil_results.fsm."),
        Column("sen", "string", False, "none, support or plan: pupil_results.sen N, K or E."),
        Column("eal", "string", False, "yes/no: pupil_results.eal."),
        Column("gender", "string", False, "female or male: pupil_results.gender F or M."),
        Column("ethnic_group", "string", False, "Major ethnic group of pupil_results.ethnicity (conf/rollup: subgroups.ethnic_groups)."),
        Column("prior_attainment_band", "string", False, "low, middle or high from pupil_results.prior_attainment (conf/rollup: subgroups.prior_attainment_bands); none without prior attainment."),
        Column("high_needs", "string", False, "yes when disadvantaged, EAL or SEN (support or plan)."),
        *(_measure_column(name) for name in all_measure_names()),
    ),
)

OUTPUT_TABLES = {
    t.name: t
    for t in (
        PUPIL_RESULTS, PUPIL_PROGRESS, NATIONAL_ESTIMATES_UNSUPPRESSED, PUBLISHED_NATIONAL_ESTIMATES, SCHOOL_SCORES,
        PUBLISHED_SCHOOL_MEASURES, TRUST_MEASURES, LA_MEASURES, REGION_MEASURES, NATIONAL_MEASURES, SUBGROUP_MEASURES,
        IDENTIFIED_SCHOOLS, UNSUPPRESSED_MEASURES, PUPIL_MEASURES, CVA_MODEL, REJECTED_ROWS, RUNS,
    )
}
