"""The release's contextual value added stage (SPEC 2.3).

Runs after the key stage's measures. For each model of the key stage (conf/models/: the
mainstream model, then the special schools model) it

1. takes the model's population from ``release.frames["pupils"]``: included pupils of
   state-funded schools of the model's provision (mainstream or special);
2. scores prior attainment and the outcome (valueadded.cva.design); a pupil without either
   is not in the model (``cva_exclusion_reason`` no_prior_attainment / no_outcome; a pupil
   who is not included keeps their ``exclusion_reason``);
3. builds the design in Spark, gathers the sufficient statistics in one pass and fits by
   REML (valueadded.cva.fit);
4. predicts every pupil in the model in four stages and takes their CVA score
   (valueadded.cva.apply), and the schools' shrunken CVA with 95% intervals.

Outputs: ``cva_model`` (coefficients, variance components, flags, timings; published), the
CVA columns of ``pupil_results`` (re-published; ``release.frames["pupils"]`` is replaced by
the enriched frame, one row per pupil as before), and ``school_measures`` rows with measure
``cva`` (score = centre + shrunken effect, lower, upper, n; band null), added to the rows
the key stage's measures published.

A model that cannot be fitted (a category with no pupils, collinear terms, fewer than 5
schools, no pupils) stops the release with the error naming the model and the terms, unless
its specification says ``when_not_estimable: report``: then cva_model gets a ``not_fitted``
row with the error and the model's pupils get ``model_not_fitted``. A design column that no
pupil of the model has (an empty category or interaction cell, as in a small cohort) is
one such error, unless the release says ``cva_empty_terms: drop``: then the column is left
out of the fit (it changes no fitted pupil's prediction) and cva_model lists it with a null
estimate and the reason in ``message``. A school variance
estimated as 0 is fitted and flagged (``boundary``, with a message), never silent.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from valueadded.config import REPO_CONF_DIR
from valueadded.cva.apply import COMPONENT_COLUMNS, RESIDUAL, predict, shrunken_school_scores
from valueadded.cva.design import OUTCOME, PRIOR_APS, design_column, with_design, with_prior_and_outcome
from valueadded.cva.fit import NoRowsError, RandomInterceptFit, fit_statistics, gather_statistics
from valueadded.cva.reml import RemlError, SingularDesignError, TooFewGroupsError
from valueadded.cva.spec import ModelSpec, load_model_spec
from valueadded.io.pseudonym import carried_pseudonyms
from valueadded.io.schemas import CVA_MODEL, CVA_PUPIL_COLUMNS, PARTITION_NAMES, PUPIL_RESULTS, SCHOOL_MEASURES, SPARK_TYPES
from valueadded.spark import materialise

log = logging.getLogger(__name__)

# The models each key stage's release fits, in conf/models/; populations must not overlap.
MODEL_FILES = {"ks2": ("ks2_mainstream.yaml", "special.yaml"), "ks4": ("ks4_mainstream.yaml", "special.yaml")}
MEASURE = "cva"
GROUP = "school_id"
PUPIL_KEY = "pupil_id"
STATE_FUNDED = "state_funded"
CVA_COLUMN_NAMES = tuple(c.name for c in CVA_PUPIL_COLUMNS)
DROPPED_NOTE = "dropped, no pupil in the model has them (cva_empty_terms: drop): "
EMPTY_TERMS_HINT = (
    " (a term no pupil has can be dropped from the fit instead: cva_empty_terms: drop in the release "
    "configuration, or --cva-empty-terms drop)"
)
BOUNDARY_NOTE = (
    "school variance estimated as 0 (boundary): the model is ordinary least squares and every "
    "school's CVA is the centre with a zero-width interval (shrinkage 0)"
)


@dataclass(frozen=True)
class ModelOutcome:
    """What happened to one model in this run."""

    spec: ModelSpec
    status: str  # fitted | not_fitted
    message: str | None
    n_pupils: int
    n_schools: int
    fit: RandomInterceptFit | None = None
    dropped_terms: tuple[str, ...] = ()  # terms no pupil had, dropped under cva_empty_terms: drop


def load_release_models(key_stage: str) -> list[ModelSpec]:
    """The key stage's CVA models, validated, with non-overlapping populations."""
    specs = [load_model_spec(REPO_CONF_DIR / "models" / name, key_stage) for name in MODEL_FILES[key_stage]]
    populations = [s.population for s in specs]
    if len(set(populations)) != len(populations):
        raise ValueError(f"{key_stage} CVA models overlap: populations {populations}")
    return specs


def _spec_file(spec: ModelSpec) -> str:
    path = Path(spec.source)
    try:
        return str(path.relative_to(REPO_CONF_DIR))
    except ValueError:
        return str(path)


def _with_model_context(error: Exception, spec: ModelSpec) -> Exception:
    """The same error, its message naming the model and its specification file."""
    message = f"CVA model {spec.name} ({_spec_file(spec)}): {error}"
    if isinstance(error, SingularDesignError):
        if error.dependencies and all(len(d) == 1 for d in error.dependencies):
            message += EMPTY_TERMS_HINT
        return SingularDesignError(message, error.terms, error.dependencies)
    if isinstance(error, TooFewGroupsError):
        return TooFewGroupsError(message, error.n_groups, error.min_groups)
    return type(error)(message)


def in_population(spec: ModelSpec) -> Column:
    return (F.col("school_sector") == STATE_FUNDED) & (F.col("school_provision") == spec.population)


def in_model() -> Column:
    """The pupils of a scored population (:func:`scored_population`) that are in the model."""
    return F.col("cva_exclusion_reason").isNull()


def cva_exclusion_reason() -> Column:
    """Why a pupil of the model's population is not in the model (null when in it)."""
    return (
        F.when(~F.col("included"), F.col("exclusion_reason"))
        .when(F.col(PRIOR_APS).isNull(), F.lit("no_prior_attainment"))
        .when(F.col(OUTCOME).isNull(), F.lit("no_outcome"))
    )


def scored_population(pupils: DataFrame, spec: ModelSpec) -> DataFrame:
    """The model's population (``in_population``) with prior attainment, outcome and
    ``cva_exclusion_reason`` (null for the pupils in the model)."""
    return with_prior_and_outcome(pupils.where(in_population(spec)), spec).withColumn(
        "cva_exclusion_reason", cva_exclusion_reason()
    )


def model_design(scored: DataFrame, spec: ModelSpec) -> DataFrame:
    """One row per pupil in the model with a ``cva_x_<term>`` column per term, from
    :func:`scored_population`; the school-level terms describe exactly these pupils."""
    return with_design(scored.where(in_model()), spec, GROUP)


def predicted_population(scored: DataFrame, spec: ModelSpec, coefficients: dict[str, float]) -> DataFrame:
    """The model's population (from :func:`scored_population`) with its CVA columns.

    The pupils in the model get the model's name and their predictions; the others keep
    their ``cva_exclusion_reason`` and ``cva_outcome`` and get nulls. Both come from one pass
    over the population: prior attainment and outcome are scored once per pupil, not once
    to choose the pupils and again to predict.
    """
    designed = with_design(scored, spec, GROUP, school_rows=scored.where(in_model()))
    predicted = predict(designed, coefficients, spec.stage_of, spec.outcome.valid_range, spec)
    return predicted.withColumns({
        **{name: F.when(in_model(), F.col(name)) for name in (*COMPONENT_COLUMNS.values(), RESIDUAL)},
        "cva_model": F.when(in_model(), F.lit(spec.name)),
    })


def fit_model_spec(pupils: DataFrame, spec: ModelSpec, empty_terms: str = "stop") -> ModelOutcome:
    """Fit a model specification to a pupil table as the release does (to try a variant).

    Args:
        pupils: the pupil table of a release (``valueadded.pipeline.pupil_table``): one row
            per pupil with the input columns the specification reads and ``included``.
        spec: e.g. ``load_model_spec("my_variant.yaml")``.
        empty_terms: ``stop`` or ``drop`` (the release's ``cva_empty_terms``).

    Returns:
        The ModelOutcome; ``.fit`` is the RandomInterceptFit (None when not fitted).
    """
    return fit_model(model_design(scored_population(pupils, spec), spec), spec, empty_terms)


def fit_model(design: DataFrame, spec: ModelSpec, empty_terms: str = "stop") -> ModelOutcome:
    """Gather and fit one model on its design frame (one row per pupil in the model).

    `empty_terms` is the release's ``cva_empty_terms``: with "drop", design columns that are
    zero for every pupil are removed before the fit (no fitted pupil's prediction depends
    on them) and reported; with "stop" they make the design singular like any other.
    """
    terms = [t for t in spec.term_names if t != "intercept"]
    started = time.perf_counter()
    try:
        stats = gather_statistics(design, OUTCOME, [design_column(t) for t in terms], GROUP, names=terms)
    except NoRowsError as error:
        if spec.when_not_estimable == "stop":
            raise _with_model_context(ValueError("no pupils in the model's population"), spec) from error
        return ModelOutcome(spec, "not_fitted", "no pupils in the model's population", 0, 0)
    gather_seconds = time.perf_counter() - started
    dropped = stats.empty_terms() if empty_terms == "drop" else ()
    if dropped:
        stats = stats.without_terms(dropped)
        log.warning("CVA model %s: dropped %d term(s) no pupil has: %s", spec.name, len(dropped), ", ".join(dropped))
    try:
        fit = fit_statistics(stats, gather_seconds=gather_seconds)
    except RemlError as error:
        if spec.when_not_estimable == "stop":
            raise _with_model_context(error, spec) from error
        log.warning("CVA model %s not fitted: %s", spec.name, error)
        return ModelOutcome(spec, "not_fitted", f"{type(error).__name__}: {error}", stats.n_total, stats.n_groups)
    notes = []
    if dropped:
        notes.append(DROPPED_NOTE + ", ".join(dropped))
    if fit.boundary:
        notes.append(BOUNDARY_NOTE)
        log.warning("CVA model %s: %s", spec.name, BOUNDARY_NOTE)
    return ModelOutcome(spec, "fitted", "; ".join(notes) or None, fit.n_pupils, fit.n_groups, fit, dropped)


def model_rows(outcome: ModelOutcome) -> list[tuple]:
    """The cva_model rows of one model (data columns, in CVA_MODEL order), terms in design order.

    A dropped term keeps its row, with mean 0 and a null estimate and standard error.
    """
    spec, fit = outcome.spec, outcome.fit
    head = (spec.name, spec.population, _spec_file(spec), outcome.status, outcome.message)
    if fit is None:
        return [(*head, None, None, None, None, None, None, None, None, outcome.n_pupils, outcome.n_schools,
                 None, None, None, None)]
    stage_of, means, coefficients = spec.stage_of, fit.term_means, fit.coefficients
    tail = (fit.sigma2_school, fit.sigma2_pupil, fit.reml_criterion, fit.n_pupils, fit.n_groups, fit.boundary,
            fit.converged, float(fit.gather_seconds), float(fit.fit_seconds))
    rows = []
    for term in spec.term_names:
        if term in outcome.dropped_terms:
            rows.append((*head, term, stage_of[term], 0.0, None, None, *tail))
        else:
            row = coefficients.loc[term]
            rows.append((*head, term, stage_of[term], float(means[term]), float(row.estimate), float(row.std_error), *tail))
    return rows


def _null_cva(frame: DataFrame, keep: tuple[str, ...] = ()) -> DataFrame:
    """Set the CVA columns (other than `keep`) to typed nulls."""
    return frame.withColumns({
        c.name: F.lit(None).cast(SPARK_TYPES[c.type]) for c in CVA_PUPIL_COLUMNS if c.name not in keep
    })


def _data_columns(schema) -> list[str]:
    return [c for c in schema.names if c not in PARTITION_NAMES]


def stage_cva(release) -> None:
    """The CVA stage: fit the key stage's models, enrich the pupils, publish the CVA outputs."""
    pupils = release.frames["pupils"]
    columns = pupils.columns
    base = pupils.drop(*CVA_COLUMN_NAMES)
    specs = load_release_models(release.key_stage)

    parts: list[DataFrame] = []
    school_rows: list[DataFrame] = []
    outcomes: list[ModelOutcome] = []
    for spec in specs:
        scored = scored_population(base, spec)
        # Not materialised: the gather reads it once, and the predictions, computed from it
        # again as column expressions, go into the materialised `enriched` below.
        design = model_design(scored, spec)
        outcome = fit_model(design, spec, release.config.cva_empty_terms)
        outcomes.append(outcome)
        log.info("CVA model %s: %s, %d pupils in %d schools", spec.name, outcome.status, outcome.n_pupils, outcome.n_schools)

        if outcome.fit is None:
            # The design's outcome column is pupil_results' cva_outcome: kept wherever it is known.
            out = scored.where(~in_model())
            parts.append(_null_cva(out, keep=("cva_exclusion_reason", OUTCOME)))
            parts.append(_null_cva(design, keep=(OUTCOME,)).withColumn("cva_exclusion_reason", F.lit("model_not_fitted")))
            continue
        parts.append(predicted_population(scored, spec, outcome.fit.coefficients["estimate"].to_dict()))

    covered = None
    for spec in specs:
        covered = in_population(spec) if covered is None else covered | in_population(spec)
    outside = base.where(~covered)
    parts.append(_null_cva(outside).withColumn(
        "cva_exclusion_reason", F.coalesce(F.col("exclusion_reason"), F.lit("no_cva_model"))
    ))

    # Each pupil's CVA columns, joined to the pupil's row. A union of the wide parts would
    # be cheaper to plan but not to keep: materialise() groups partitions by count, so the
    # union of a large and a small population came out as one partition of 640,522 pupils
    # and one of 20,253, and every later pass over the pupils ran on one core.
    cva = parts[0].select(PUPIL_KEY, *CVA_COLUMN_NAMES)
    for part in parts[1:]:
        cva = cva.unionByName(part.select(PUPIL_KEY, *CVA_COLUMN_NAMES))
    enriched = materialise(base.join(F.broadcast(cva), on=PUPIL_KEY, how="left").select(*columns))
    _check_rows(release, pupils, enriched, outcomes)

    # School scores from the materialised enriched frame, so the predictions are computed once.
    for outcome in outcomes:
        if outcome.fit is None:
            continue
        school_rows.append(
            shrunken_school_scores(
                enriched.where(F.col("cva_model") == outcome.spec.name), outcome.fit.sigma2_school,
                outcome.fit.sigma2_pupil, outcome.spec.outcome.school_score_centre, GROUP,
            ).select(GROUP, F.lit(MEASURE).alias("measure"), "n", "score", "lower", "upper",
                     F.lit(None).cast("string").alias("band"))
        )
    release.frames["cva_input_pupils"] = pupils
    release.frames["pupils"] = enriched
    release.publish(PUPIL_RESULTS, enriched.select(*PUPIL_RESULTS.names, *carried_pseudonyms(enriched)))
    rows = [row for outcome in outcomes for row in model_rows(outcome)]
    release.publish(CVA_MODEL, release.spark.createDataFrame(rows, schema=_model_schema()))
    if school_rows:
        cva_schools = school_rows[0]
        for frame in school_rows[1:]:
            cva_schools = cva_schools.unionByName(frame)
        data_columns = _data_columns(SCHOOL_MEASURES)
        measures = cva_schools.select(*data_columns)
        if SCHOOL_MEASURES.name in release.outputs:
            measures = release.outputs[SCHOOL_MEASURES.name][1].select(*data_columns).unionByName(measures)
        release.publish(SCHOOL_MEASURES, measures)


def _model_schema() -> T.StructType:
    return T.StructType([f for f in CVA_MODEL.spark_schema().fields if f.name not in PARTITION_NAMES])


def _check_rows(release, pupils: DataFrame, enriched: DataFrame, outcomes: list[ModelOutcome]) -> None:
    """Rows out = rows in (one row per pupil), and the run log gets the CVA counts."""
    by_group = {
        (row["cva_model"], row["cva_exclusion_reason"]): row["n"]
        for row in enriched.groupBy("cva_model", "cva_exclusion_reason").agg(F.count(F.lit(1)).alias("n")).collect()
    }
    rows_in, rows_out = pupils.count(), sum(by_group.values())
    release.record.row_counts["cva"] = {
        "rows_in": rows_in,
        "rows_out": rows_out,
        "models": {
            o.spec.name: {
                "status": o.status, "pupils": o.n_pupils, "schools": o.n_schools,
                "boundary": None if o.fit is None else o.fit.boundary,
            }
            for o in outcomes
        },
        "not_in_a_model": dict(sorted(
            (reason, n) for (model, reason), n in by_group.items() if model is None
        )),
    }
    if rows_in != rows_out:
        raise RuntimeError(f"CVA stage changed the number of pupil rows: {rows_in} in, {rows_out} out")
    # Every pupil is in a model or has a reason: a row with neither found no CVA row to join.
    if by_group.get((None, None)):
        raise RuntimeError(f"CVA stage: {by_group[(None, None)]} pupil(s) got no CVA row")
