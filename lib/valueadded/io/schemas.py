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
    """One column: its name, type, whether it may be null, and what it means."""

    name: str
    type: str
    nullable: bool = True
    description: str = ""

    def __post_init__(self) -> None:
        if self.type not in SPARK_TYPES:
            raise ValueError(f"column {self.name}: unknown type {self.type!r}")


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

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

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
    version=2,  # 2: CVA columns appended
    description="Restricted pupil-level table: every accepted pupil with inclusion flag and reason.",
    partition_by=PARTITION_NAMES,
    audience="restricted",
    key=("academic_year", "key_stage", "data_stage", "pupil_id"),
    columns=(
        *PARTITION_COLUMNS,
        Column("pupil_id", "string", False, "Pupil identifier."),
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
    description="Restricted: each pupil's progress in each subject, with the estimate it was measured against.",
    partition_by=PARTITION_NAMES,
    audience="restricted",
    key=("academic_year", "key_stage", "data_stage", "pupil_id", "subject"),
    columns=(
        *PARTITION_COLUMNS,
        Column("pupil_id", "string", False, "Pupil identifier."),
        Column("school_id", "string", False, "School URN."),
        Column("subject", "string", False, "Subject or Progress 8 element."),
        Column("prior_attainment_group", "int", True, "Prior attainment group."),
        Column("outcome", "double", True, "The outcome measured: scaled score or nominal score (KS2), Attainment 8 or element points (KS4)."),
        Column("in_progress", "boolean", False, "The pupil has a progress score in this subject."),
        Column("in_national", "boolean", False, "The pupil counts towards the national estimates (state-funded mainstream)."),
        Column("exclusion_reason", "string", True, "Why the pupil has no progress score in this subject (null when in_progress)."),
        Column("estimate", "double", True, "National estimate for the pupil's group and subject."),
        Column("progress", "double", True, "(outcome - estimate) / divisor, before the extreme-negative adjustment."),
        Column("capped", "boolean", False, "The score was raised to the group's cap (extreme negative)."),
        Column("adjusted_progress", "double", True, "Progress after the extreme-negative adjustment; used for school scores."),
    ),
)

NATIONAL_ESTIMATES = TableSchema(
    name="national_estimates",
    grain="one row per subject per prior attainment group",
    description="The national estimates pupils are measured against, with the extreme-negative caps.",
    partition_by=PARTITION_NAMES,
    audience="published",
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

SCHOOL_MEASURES = TableSchema(
    name="school_measures",
    grain="one row per school per measure",
    description="School progress scores with 95% intervals and bands, and attainment measures.",
    partition_by=PARTITION_NAMES,
    audience="published",
    key=("academic_year", "key_stage", "data_stage", "school_id", "measure"),
    columns=(
        *PARTITION_COLUMNS,
        Column("school_id", "string", False, "School URN."),
        Column("measure", "string", False, "Measure name, e.g. progress_reading, progress_8, pct_expected_rwm, average_scaled_score_maths."),
        Column("n", "int", False, "Pupils behind the figure."),
        Column("score", "double", True, "The school's figure: mean adjusted progress, a percentage, or an average."),
        Column("lower", "double", True, "Lower limit of the 95% confidence interval (progress measures)."),
        Column("upper", "double", True, "Upper limit of the 95% confidence interval (progress measures)."),
        Column("band", "string", True, "well_above, above, average, below or well_below (progress measures)."),
    ),
)

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
    description="Input rows that broke a row rule, with the first rule broken and all rules broken.",
    partition_by=PARTITION_NAMES,
    audience="restricted",
    columns=(
        *PARTITION_COLUMNS,
        Column("source_table", "string", False, "Input table the row came from."),
        Column("pupil_id", "string", True, "Pupil identifier, where the table has one."),
        Column("school_id", "string", True, "School, where the table has one."),
        Column("reason_code", "string", False, "First rule the row broke (see docs/validation.md)."),
        Column("all_reasons", "string", False, "Every rule the row broke, comma-separated."),
        Column("row_json", "string", False, "The row as it was read, as JSON."),
    ),
)

RUNS = TableSchema(
    name="runs",
    grain="one row per release run (appended, never replaced)",
    description="Run log: provenance, reconciliation and timings of every run, successful or not.",
    partition_by=PARTITION_NAMES,
    audience="restricted",
    columns=(
        *PARTITION_COLUMNS,
        Column("run_id", "string", False, "Unique run identifier."),
        Column("command", "string", False, "The command line that started the run."),
        Column("config_json", "string", False, "The resolved configuration, as JSON."),
        Column("input_fingerprints_json", "string", False, "SHA-256 of every input file, as JSON."),
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

OUTPUT_TABLES = {t.name: t for t in (PUPIL_RESULTS, PUPIL_PROGRESS, NATIONAL_ESTIMATES, SCHOOL_MEASURES, CVA_MODEL, REJECTED_ROWS, RUNS)}
