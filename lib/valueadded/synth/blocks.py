"""One block of schools' pupils: census rows, results rows, amendments and ground truth.

A block is a fixed run of consecutive schools (in school_id order). Everything random about its
pupils is drawn from generators seeded by (seed, year, block, stream), so a block's rows never
depend on how blocks are grouped into files.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from valueadded.io.schemas import A8_SLOT_COLUMNS, KS2_RESULTS, KS4_RESULTS, PUPILS
from valueadded.synth import amendments as amend
from valueadded.synth import attainment as att
from valueadded.synth.dates import days
from valueadded.synth.geography import ETHNIC_GROUPS
from valueadded.synth.pupils import draw_characteristics
from valueadded.synth.schools import Schools
from valueadded.synth.truth import KS2_PUPIL_CORRELATION, OutcomeModel, design_matrix

STREAMS = {"ks2": 1, "ks4": 2, "amendments": 3}
PUPIL_ID_PREFIX = {"ks2": "A", "ks4": "B"}  # + 12 digits: unique across both cohorts
NO_PRIOR_SCHOOL_MEAN = 105.0
# Prior record missing for reasons other than arriving after it: base + if mobile + if EAL.
MISSING_PRIOR_RATES = (0.005, 0.03, 0.005)
KS1_YEARS_BEFORE, KS2_YEARS_BEFORE = 4, 5

PUPIL_TRUTH_SCHEMA = pa.schema([
    pa.field("pupil_id", pa.string(), False),
    pa.field("key_stage", pa.string(), False),
    pa.field("school_id", pa.string(), False),
    pa.field("prior_observed", pa.bool_(), False),
    pa.field("prior_aps", pa.float64(), False),
    pa.field("school_mean_prior_aps", pa.float64(), True),
    pa.field("school_sd_prior_aps", pa.float64(), True),
    pa.field("discountable", pa.bool_(), False),
    pa.field("latent_reading", pa.float64(), True),
    pa.field("latent_maths", pa.float64(), True),
    pa.field("latent_ks2_average", pa.float64(), True),
    pa.field("latent_writing", pa.float64(), True),
    pa.field("latent_attainment8", pa.float64(), True),
    pa.field("attainment8", pa.float64(), True),
])


@dataclass(frozen=True)
class CohortContext:
    """What every block needs: the schools, their true effects and the true models."""

    year: int
    seed: int
    schools: Schools
    school_effects: dict[str, np.ndarray]  # per outcome, one entry per school
    models: dict[str, OutcomeModel]
    ks1_era: str
    first_serial: dict[str, np.ndarray]  # per key stage, per school: serial of its first pupil


@dataclass(frozen=True)
class StageRows:
    """The rows one key stage cohort of one block contributes to each table."""

    key_stage: str
    pupils: pa.Table
    results: pa.Table
    pupil_truth: pa.Table
    amendments: dict[str, list]
    # per outcome with a pupil SD profile: (sum of squared SD multipliers, pupils) over observed priors
    multiplier_sums: dict[str, tuple[float, int]]


def block_rng(seed: int, year: int, block: int, stream: int) -> np.random.Generator:
    """The generator for one stream of one block."""
    return np.random.default_rng(np.random.SeedSequence([seed, year, block, stream]))


def _strings(vocabulary, index: np.ndarray) -> pa.Array:
    """Labels from a vocabulary by index; -1 gives null."""
    index = np.asarray(index)
    return pc.take(pa.array(list(vocabulary), pa.string()), pa.array(index, pa.int32(), mask=index < 0))


def _dates(day_numbers: np.ndarray) -> pa.Array:
    return pa.array(np.asarray(day_numbers, dtype=np.int32), pa.date32())


def _pupil_ids(key_stage: str, serial: np.ndarray) -> pa.Array:
    digits = pc.cast(pa.array(serial + 10**12, pa.int64()), pa.string())
    return pc.utf8_replace_slice(digits, start=0, stop=1, replacement=PUPIL_ID_PREFIX[key_stage])


def _correlated_noise(rng, n: int, sd_a: float, sd_b: float, rho: float) -> tuple[np.ndarray, np.ndarray]:
    z = rng.standard_normal((n, 2))
    return sd_a * z[:, 0], sd_b * (rho * z[:, 0] + np.sqrt(1 - rho**2) * z[:, 1])


def _force_non_test_codes(rng, non_test: dict[str, np.ndarray], disapplied: np.ndarray, sen: np.ndarray) -> None:
    """Showcase block only: make sure every non-sitting code occurs at least once per subject."""
    d_code = att.TEST_CODES.index("D")
    if len(sen) == 0:
        return
    if not disapplied.any():
        candidates = np.flatnonzero(sen == 2) if (sen == 2).any() else np.arange(len(sen))
        pupil = rng.choice(candidates)
        disapplied[pupil] = True
        for codes in non_test.values():
            codes[pupil] = d_code
    for codes in non_test.values():
        for label in ("A", "M", "U", "Q"):
            code = att.TEST_CODES.index(label)
            sitting = np.flatnonzero(codes < 0)
            if not (codes == code).any() and len(sitting):
                codes[rng.choice(sitting)] = code


def _pupils_table(ctx: CohortContext, key_stage: str, chars, ids: pa.Array) -> pa.Table:
    school_ids = ctx.schools.school_id[chars.school]
    return pa.table({
        "pupil_id": ids,
        "key_stage": pa.array(np.full(len(chars), key_stage)),
        "school_id": pa.array(school_ids),
        "gender": _strings(("M", "F"), chars.female.astype(np.int8)),
        "date_of_birth": _dates(chars.date_of_birth),
        "sen": _strings(("N", "K", "E"), chars.sen),
        "ethnicity": _strings(ETHNIC_GROUPS, chars.ethnicity),
        "fsm": chars.fsm, "disadvantaged": chars.disadvantaged, "eal": chars.eal,
        "mobile": chars.mobile, "ever_in_care": chars.ever_in_care, "idaci": chars.idaci,
        "arrived_from_overseas": chars.arrived_from_overseas,
        "country_english_official": pa.array(chars.country_english_official == 1,
                                             mask=chars.country_english_official < 0),
        "first_admission_date": _dates(chars.first_admission_date),
    }, schema=PUPILS.arrow_schema())


def _design_inputs(chars, prior_aps, reading_minus, maths_minus, school_mean=None, school_sd=None) -> dict:
    return {
        "prior_aps": prior_aps, "prior_reading_minus_aps": reading_minus, "prior_maths_minus_aps": maths_minus,
        "female": chars.female, "sen": chars.sen, "ethnicity": chars.ethnicity, "fsm": chars.fsm,
        "eal": chars.eal, "mobile": chars.mobile, "age_in_months": chars.age_in_months,
        "ever_in_care": chars.ever_in_care, "idaci": chars.idaci,
        "school_mean_prior_aps": school_mean, "school_sd_prior_aps": school_sd,
    }


def _missing_prior(rng, chars, arrived_after: int) -> np.ndarray:
    base, if_mobile, if_eal = MISSING_PRIOR_RATES
    return (chars.first_admission_date > arrived_after) | (
        rng.random(len(chars)) < base + if_mobile * chars.mobile + if_eal * chars.eal)


def _truth_table(ids, key_stage, chars, ctx, observed, prior_aps, **columns) -> pa.Table:
    n = len(chars)
    data = {"pupil_id": ids, "key_stage": pa.array(np.full(n, key_stage)),
            "school_id": pa.array(ctx.schools.school_id[chars.school]),
            "prior_observed": observed, "prior_aps": prior_aps, "discountable": chars.discountable}
    for field in PUPIL_TRUTH_SCHEMA:
        if field.name not in data:
            value = columns.get(field.name)
            data[field.name] = pa.nulls(n, pa.float64()) if value is None else pa.array(value, pa.float64())
    return pa.table(data, schema=PUPIL_TRUTH_SCHEMA)


def _rank_within(school: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal school indices (pupils are grouped by school)."""
    starts = np.flatnonzero(np.r_[True, school[1:] != school[:-1]])
    run_start = np.repeat(starts, np.diff(np.r_[starts, len(school)]))
    return np.arange(len(school)) - run_start


def _school_prior_summary(local: np.ndarray, prior_aps: np.ndarray, observed: np.ndarray):
    """Per pupil: mean and population SD of prior_aps over observed pupils of the same school."""
    counts = np.bincount(local, weights=observed)
    sums = np.bincount(local, weights=np.where(observed, prior_aps, 0.0))
    mean = np.where(counts > 0, sums / np.maximum(counts, 1), NO_PRIOR_SCHOOL_MEAN)
    squares = np.bincount(local, weights=np.where(observed, (prior_aps - mean[local]) ** 2, 0.0))
    sd = np.sqrt(np.where(counts > 0, squares / np.maximum(counts, 1), 0.0))
    return mean[local], sd[local]


def ks2_block(ctx: CohortContext, school: np.ndarray, rng, amend_rng, showcase: bool) -> StageRows:
    """KS2 cohort rows of a block's primary-phase schools; `school` has one entry per pupil."""
    year, n = ctx.year, len(school)
    chars = draw_characteristics(rng, school, ctx.schools, year, "ks2")
    ids = _pupil_ids("ks2", ctx.first_serial["ks2"][school] + _rank_within(school))
    latents = att.subject_latents(rng, att.prior_ability(rng, chars, ctx.schools), chars, "ks1")
    vocabulary, points = att.ks1_vocabulary(ctx.ks1_era)
    codes = att.ks1_assessments(latents, ctx.ks1_era)
    subject_points = {s: points[c] for s, c in codes.items()}
    prior_aps = att.ks1_prior_aps(subject_points)
    missing = _missing_prior(rng, chars, days(dt.date(year - KS1_YEARS_BEFORE, 8, 31)))
    inputs = _design_inputs(chars, prior_aps, subject_points["reading"] - prior_aps,
                            subject_points["maths"] - prior_aps)

    reading, maths = ctx.models["ks2_reading"], ctx.models["ks2_maths"]
    noise_r, noise_m = _correlated_noise(rng, n, np.sqrt(reading.sigma2_pupil), np.sqrt(maths.sigma2_pupil),
                                         KS2_PUPIL_CORRELATION)
    latent = {
        "reading": (design_matrix(reading.terms, inputs) @ reading.beta
                    + ctx.school_effects["ks2_reading"][school] + noise_r),
        "maths": design_matrix(maths.terms, inputs) @ maths.beta + ctx.school_effects["ks2_maths"][school] + noise_m,
    }
    disapplied = att.draw_disapplied(rng, chars.sen)
    non_test = {s: att.draw_non_test_codes(rng, chars.sen, disapplied) for s in ("reading", "maths")}
    if showcase:
        _force_non_test_codes(rng, non_test, disapplied, chars.sen)
    outcomes = {s: att.ks2_test_outcomes(rng, latent[s], chars.sen, non_test[s]) for s in ("reading", "maths")}
    latent_writing = ((latent["reading"] + latent["maths"]) / 2 + att.WRITING_FEMALE_SHIFT * (chars.female - 0.5)
                      + rng.normal(0.0, att.WRITING_NOISE_SD, n))
    writing_ta, writing_pscale = att.writing_assessment(rng, latent_writing, chars.sen, disapplied)

    columns = {"pupil_id": ids}
    for subject in ("reading", "writing", "maths"):
        columns[f"ks1_{subject}"] = _strings(vocabulary, np.where(missing, -1, codes[subject]))
    for subject in ("reading", "maths"):
        score, code, ta, pscale = outcomes[subject]
        columns[f"{subject}_scaled_score"] = pa.array(score, pa.int32(), mask=score < 0)
        columns[f"{subject}_test_code"] = _strings(att.TEST_CODES, code)
        columns[f"{subject}_ta"] = _strings(att.TEST_TA, ta)
        columns[f"{subject}_pscale"] = _strings(att.PSCALES, pscale)
    columns["writing_ta"] = _strings(att.TEST_TA, writing_ta)
    columns["writing_pscale"] = _strings(att.PSCALES, writing_pscale)
    results = pa.table(columns, schema=KS2_RESULTS.arrow_schema())

    truth = _truth_table(ids, "ks2", chars, ctx, ~missing, prior_aps,
                         latent_reading=latent["reading"], latent_maths=latent["maths"],
                         latent_ks2_average=(latent["reading"] + latent["maths"]) / 2, latent_writing=latent_writing)
    scores = {s: outcomes[s][0] for s in ("reading", "maths")}
    writing_labels = np.array((*att.TEST_TA, ""), dtype=object)[writing_ta]
    amendments = amend.ks2_amendments(amend_rng, ids, scores, writing_labels)
    return StageRows("ks2", _pupils_table(ctx, "ks2", chars, ids), results, truth, amendments, {})


def ks4_block(ctx: CohortContext, school: np.ndarray, rng, amend_rng, showcase: bool) -> StageRows:
    """KS4 cohort rows of a block's secondary-phase schools; `school` has one entry per pupil."""
    year, n = ctx.year, len(school)
    chars = draw_characteristics(rng, school, ctx.schools, year, "ks4")
    ids = _pupil_ids("ks4", ctx.first_serial["ks4"][school] + _rank_within(school))
    latents = att.subject_latents(rng, att.prior_ability(rng, chars, ctx.schools), chars, "ks2")
    ks2_latent = att.ks2_score_latent(latents)
    disapplied = att.draw_disapplied(rng, chars.sen)
    non_test = {s: att.draw_non_test_codes(rng, chars.sen, disapplied) for s in ("reading", "maths")}
    if showcase:
        _force_non_test_codes(rng, non_test, disapplied, chars.sen)
    prior = {s: att.ks2_test_outcomes(rng, ks2_latent[s], chars.sen, non_test[s]) for s in ("reading", "maths")}
    no_record = _missing_prior(rng, chars, days(dt.date(year - KS2_YEARS_BEFORE, 8, 31)))
    value = {s: att.ks2_prior_value(*prior[s]) for s in ("reading", "maths")}
    observed = ~no_record & np.isfinite(value["reading"]) & np.isfinite(value["maths"])
    for s in ("reading", "maths"):  # unobserved priors: the score the pupil would have had
        value[s] = np.where(np.isfinite(value[s]), value[s], np.clip(np.rint(ks2_latent[s]), 59, 120))
    prior_aps = (value["reading"] + value["maths"]) / 2
    local = np.unique(school, return_inverse=True)[1]
    school_mean, school_sd = _school_prior_summary(local, prior_aps, observed)
    inputs = _design_inputs(chars, prior_aps, value["reading"] - prior_aps, value["maths"] - prior_aps,
                            school_mean, school_sd)
    model = ctx.models["ks4_attainment8"]
    conditional_mean = design_matrix(model.terms, inputs) @ model.beta + ctx.school_effects["ks4_attainment8"][school]
    sd_multiplier = model.pupil_sd_multiplier(conditional_mean)
    latent_a8 = conditional_mean + rng.normal(0.0, np.sqrt(model.sigma2_pupil), n) * sd_multiplier
    slots, attainment8 = att.attainment8_slots(rng, latent_a8)
    ebacc = att.ebacc_subject_points(rng, attainment8)

    columns = {"pupil_id": ids}
    for subject in ("reading", "maths"):
        score, code, ta, pscale = (np.where(no_record, -1, a) for a in prior[subject])
        columns[f"ks2_{subject}_scaled_score"] = pa.array(score, pa.int32(), mask=score < 0)
        columns[f"ks2_{subject}_test_code"] = _strings(att.TEST_CODES, code)
        columns[f"ks2_{subject}_ta"] = _strings(att.TEST_TA, ta)
        columns[f"ks2_{subject}_pscale"] = _strings(att.PSCALES, pscale)
    for k, name in enumerate(A8_SLOT_COLUMNS):
        columns[name] = slots[:, k]
    for subject, points in ebacc.items():
        columns[f"{subject}_points"] = pa.array(points, pa.float64(), mask=np.isnan(points))
    results = pa.table(columns, schema=KS4_RESULTS.arrow_schema())

    truth = _truth_table(ids, "ks4", chars, ctx, observed, prior_aps, school_mean_prior_aps=school_mean,
                         school_sd_prior_aps=school_sd, latent_attainment8=latent_a8, attainment8=attainment8)
    amendments = amend.ks4_amendments(amend_rng, ids, slots)
    multiplier_sums = {model.outcome: (float((sd_multiplier[observed] ** 2).sum()), int(observed.sum()))}
    return StageRows("ks4", _pupils_table(ctx, "ks4", chars, ids), results, truth, amendments, multiplier_sums)


def generate_block(ctx: CohortContext, block: int, first: int, stop: int) -> list[StageRows]:
    """All rows of schools[first:stop], one StageRows per key stage present.

    Block 0 also makes sure every non-sitting test code occurs, so that even a tiny cohort has them.
    """
    schools = np.arange(first, stop)
    key_stage = ctx.schools.key_stage[first:stop]
    amend_rng = block_rng(ctx.seed, ctx.year, block, STREAMS["amendments"])
    rows = []
    for stage, make in (("ks2", ks2_block), ("ks4", ks4_block)):
        members = schools[key_stage == stage]
        school = np.repeat(members, ctx.schools.cohort_size[members])
        if len(school):
            rng = block_rng(ctx.seed, ctx.year, block, STREAMS[stage])
            rows.append(make(ctx, school, rng, amend_rng, showcase=block == 0))
    return rows
