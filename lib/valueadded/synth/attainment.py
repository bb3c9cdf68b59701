"""Attainment: latent prior ability, KS1 teacher assessments, KS2 test outcomes, A8 slots.

Per pupil (one entry per pupil of a block). A latent prior ability (standard normal scale) comes
from the pupil's characteristics and school intake; KS1 assessments (for the KS2 cohort) and KS2
test results (the KS4 cohort's prior) are read off it. KS2 test outcomes, from a latent scaled
score, carry the awkward codes of SPEC 2.2 at realistic rates. Attainment 8 slot points are split
from a target A8 so that the double-weighted sum equals the target to the cent.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtri

from valueadded.synth.geography import ETHNIC_GROUPS

# ---------------------------------------------------------------- latent prior ability
ABILITY_SHIFTS = {"sen_support": -0.85, "sen_plan": -1.9, "fsm": -0.35, "ever_in_care": -0.4, "mobile": -0.15}
ABILITY_PER_IDACI = -1.2
ABILITY_SPECIAL_SCHOOL = -0.4
ABILITY_ETHNIC_SHIFT = {"WIRT": -0.9, "WROM": -1.0, "CHNE": 0.35, "AIND": 0.25, "BCRB": -0.15, "MWBC": -0.1}
ABILITY_NOISE_SD = 0.85
# Subject-specific parts: (female, EAL, per month of age above the middle of the year), noise SD.
SUBJECT_SHIFTS = {
    "ks1": {"reading": (0.15, -0.35, 0.06), "writing": (0.25, -0.35, 0.06), "maths": (-0.05, -0.15, 0.06)},
    "ks2": {"reading": (0.10, -0.25, 0.03), "maths": (-0.05, -0.05, 0.03)},
}
SUBJECT_NOISE_SD = 0.5
# Standardisation of the subject latent (its mean and SD are about -0.43 and 1.21); calibration
# constants: with the code shares below they set the KS1 and KS2 distributions (e.g. reading GDS
# ~22%, PKF ~4%; KS2 reading mean ~105), so changing them moves every calibrated figure.
SUBJECT_LATENT_MEAN, SUBJECT_LATENT_SD = -0.33, 1.23

# ---------------------------------------------------------------- KS1 assessments
KS1_FRAMEWORK_POINTS = {"PKF": 4.0, "WTS": 6.0, "EXS": 8.0, "GDS": 10.0}
KS1_LEVEL_POINTS = {
    "P1": 0.5, "P2": 0.75, "P3": 1.0, "P4": 1.5, "P5": 1.75, "P6": 2.0, "P7": 2.25, "P8": 2.75,
    "W": 3.0, "1": 9.0, "2C": 13.0, "2B": 15.0, "2A": 17.0, "3": 21.0, "4+": 27.0,
}
KS1_FRAMEWORK_SHARES = {  # PKF, WTS, EXS, GDS
    "reading": (0.03, 0.17, 0.55, 0.25),
    "writing": (0.035, 0.24, 0.575, 0.15),
    "maths": (0.03, 0.19, 0.56, 0.22),
}
P_SCALE_SPLIT = np.array([0.05, 0.05, 0.08, 0.10, 0.12, 0.15, 0.20, 0.25])
KS1_LEVEL_SHARES = {  # P-scales (all), W, 1, 2C, 2B, 2A, 3, 4+
    "reading": (0.010, 0.015, 0.06, 0.10, 0.22, 0.27, 0.32, 0.005),
    "writing": (0.010, 0.020, 0.09, 0.16, 0.28, 0.26, 0.177, 0.003),
    "maths": (0.010, 0.012, 0.053, 0.10, 0.24, 0.31, 0.27, 0.005),
}
FIRST_FRAMEWORK_KS1_YEAR = 2016

# ---------------------------------------------------------------- KS2 tests
TEST_CODES = ("S", "N", "B", "A", "D", "M", "U", "Q")
TEST_TA = ("EXS", "HNM", "GDS", "WTS", "PKG", "PKE", "PKF", "BLW", "A", "D", "M", "Q")
PSCALES = ("P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8", "NOTSEN")
# Per subject (A, M, U by SEN N/K/E, Q); D is per pupil, by SEN.
ABSENT_RATE = 0.005
MISSING_RATE = 0.001
UNABLE_RATE = (0.0003, 0.002, 0.008)
MALADMINISTRATION_RATE = 0.0004
DISAPPLIED_RATE = (0.0002, 0.0006, 0.012)
PLAIN_ABSENT_TA_SHARE = 0.5  # absent pupils with TA "A"; the rest keep their EXS/HNM assessment
SCALED_MIN, SCALED_MAX = 80, 120
# Below 80, a pupil with an EHC plan is coded B; with SEN support or no SEN only below these
# latent scores (above them the pupil sat the test without reaching a scaled score: N).
SEN_SUPPORT_BELOW_TEST, NOT_SEN_BELOW_TEST = 78.0, 75.0
HNM_NOT_SAT_SHARE = 0.25  # of would-be N pupils, those who did not sit (code A, TA HNM)
N_WITH_EXS_SHARE = 0.15
PRE_KEY_STAGE_BOUNDS = ((77.0, "PKG"), (74.0, "PKE"), (70.0, "PKF"))  # latent >= bound
P_SCALE_BOUNDS = (67.0, 64.0, 61.0, 58.0, 55.0, 52.0, 49.0)  # P8 .. P2; below is P1
# Nominal KS2 scores of SPEC 2.2 (the 2024 configuration), for the KS4 prior attainment.
NOMINAL_BY_PSCALE = {"P1": 59, "P2": 59, "P3": 59, "P4": 61, "P5": 63, "P6": 65, "P7": 67, "P8": 69, "NOTSEN": 71}
NOMINAL_BY_TA = {"PKF": 73, "PKE": 76, "PKG": 79}
NOMINAL_N_CODE = 79
# KS4 cohort's KS2 scores from the standardised latent: centre + sd*z + skew*min(z, 0)^2.
KS2_SCORE_CURVE = {"reading": (105.8, 8.0, -2.5), "maths": (105.6, 7.4, -2.5)}
# Writing TA from the mean of the reading and maths latents, + female shift + noise.
WRITING_FEMALE_SHIFT, WRITING_NOISE_SD = 1.5, 4.0
WRITING_BOUNDS = ((113.5, "GDS"), (99.0, "EXS"), (87.0, "WTS"), (83.0, "PKG"), (79.0, "PKE"), (75.0, "PKF"))
WRITING_NON_TA_RATES = (("A", 0.002), ("M", 0.0008), ("Q", 0.0002))

# ---------------------------------------------------------------- Attainment 8 slots
A8_MAX = 90.0
SLOT_WEIGHTS = np.array([2, 2, 1, 1, 1, 1, 1, 1])  # english, maths, ebacc_1..3, open_1..3
# Points per slot relative to the pupil's mean slot points, at three mean-slot anchors (DfE 2024).
SLOT_ANCHORS = np.array([1.6, 4.7, 8.2])
SLOT_RELATIVE = {"english": (1.21, 1.08, 0.98), "maths": (0.75, 1.0, 1.02),
                 "ebacc": (1.47, 1.01, 1.02), "open": (1.63, 1.03, 0.985)}
SLOT_FILL_LOG_ODDS = (-0.6, 0.84)  # P(optional slot filled) = logistic(a + b * mean slot points)
SLOT_NOISE_SD = 0.18
# EBacc subject points: P(entered) = logistic(a + b*(g - 4.7)); points ~ factor*g + noise, rounding step.
EBACC_SUBJECTS = {
    "science": ((1.1, 0.5), (0.99, 0.9, 0.5)),
    "humanities": ((1.7, 0.45), (0.95, 1.0, 1.0)),
    "languages": ((-0.15, 0.55), (0.93, 1.0, 1.0)),
}


def prior_ability(rng: np.random.Generator, chars, schools) -> np.ndarray:
    """Latent prior ability per pupil (SD units): school intake + characteristics + noise."""
    shift = (schools.intake[chars.school]
             + ABILITY_SHIFTS["sen_support"] * (chars.sen == 1) + ABILITY_SHIFTS["sen_plan"] * (chars.sen == 2)
             + ABILITY_SHIFTS["fsm"] * chars.fsm + ABILITY_SHIFTS["ever_in_care"] * chars.ever_in_care
             + ABILITY_SHIFTS["mobile"] * chars.mobile + ABILITY_PER_IDACI * chars.idaci
             + ABILITY_SPECIAL_SCHOOL * schools.is_special[chars.school]
             + np.array([ABILITY_ETHNIC_SHIFT.get(g, 0.0) for g in ETHNIC_GROUPS])[chars.ethnicity])
    return shift + rng.normal(0.0, ABILITY_NOISE_SD, len(chars))


def subject_latents(rng, ability: np.ndarray, chars, stage: str) -> dict[str, np.ndarray]:
    """Standardised (about N(0,1)) latent attainment per subject at a prior key stage."""
    latents = {}
    for subject, (female, eal, per_month) in SUBJECT_SHIFTS[stage].items():
        raw = (ability + female * chars.female + eal * chars.eal + per_month * (chars.age_in_months - 5.5)
               + rng.normal(0.0, SUBJECT_NOISE_SD, len(ability)))
        latents[subject] = (raw - SUBJECT_LATENT_MEAN) / SUBJECT_LATENT_SD
    return latents


def ks1_era(year: int) -> str:
    """KS1 era of a KS2 cohort: KS1 was taken four years before KS2."""
    return "ks1_framework" if year - 4 >= FIRST_FRAMEWORK_KS1_YEAR else "ks1_levels"


def ks1_vocabulary(era: str) -> tuple[tuple[str, ...], np.ndarray]:
    """KS1 codes of an era, lowest first, and their points."""
    table = KS1_FRAMEWORK_POINTS if era == "ks1_framework" else KS1_LEVEL_POINTS
    return tuple(table), np.array(list(table.values()))


def ks1_assessments(latents: dict[str, np.ndarray], era: str) -> dict[str, np.ndarray]:
    """KS1 teacher assessment per subject, as indices into ks1_vocabulary(era)."""
    codes = {}
    for subject in ("reading", "writing", "maths"):
        if era == "ks1_framework":
            shares = np.array(KS1_FRAMEWORK_SHARES[subject])
        else:
            level = KS1_LEVEL_SHARES[subject]
            shares = np.concatenate([level[0] * P_SCALE_SPLIT, level[1:]])
        bounds = ndtri(np.cumsum(shares)[:-1] / shares.sum())
        codes[subject] = np.searchsorted(bounds, latents[subject])
    return codes


def ks1_prior_aps(points: dict[str, np.ndarray]) -> np.ndarray:
    """KS1 APS with maths half-weighted: ((reading + writing)/2 + maths)/2."""
    return ((points["reading"] + points["writing"]) / 2 + points["maths"]) / 2


def ks2_score_latent(latents: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Latent KS2 scaled scores (before codes, rounding and clipping) from standardised latents."""
    out = {}
    for subject, (centre, sd, skew) in KS2_SCORE_CURVE.items():
        z = latents[subject]
        out[subject] = centre + sd * z + skew * np.minimum(z, 0.0) ** 2
    return out


def _index(vocabulary: tuple[str, ...], code: str) -> int:
    return vocabulary.index(code)


def draw_non_test_codes(rng, sen: np.ndarray, disapplied: np.ndarray) -> np.ndarray:
    """Per pupil, one subject: the non-sitting code index (A/D/M/U/Q) or -1 if the pupil sits."""
    n = len(sen)
    u = rng.random(n)
    rates = np.column_stack([
        np.full(n, ABSENT_RATE), np.full(n, MISSING_RATE), np.array(UNABLE_RATE)[sen],
        np.full(n, MALADMINISTRATION_RATE),
    ])
    cumulative = np.cumsum(rates, axis=1)
    which = (u[:, None] >= cumulative).sum(axis=1)
    codes = np.array([_index(TEST_CODES, c) for c in ("A", "M", "U", "Q")] + [-1])[which]
    return np.where(disapplied, _index(TEST_CODES, "D"), codes)


def draw_disapplied(rng, sen: np.ndarray) -> np.ndarray:
    """Pupils disapplied from the national curriculum (D in every subject)."""
    return rng.random(len(sen)) < np.array(DISAPPLIED_RATE)[sen]


def ks2_test_outcomes(rng, latent: np.ndarray, sen: np.ndarray, non_test: np.ndarray):
    """KS2 test outcome for one subject: (scaled score or -1, test code, TA, p-scale) indices.

    `non_test` holds forced non-sitting codes (from draw_non_test_codes, -1 for pupils who sit);
    the rest get S, N or B from their latent scaled score. TA and p-scale indices are -1 for null.
    """
    n = len(latent)
    code = non_test.copy()
    ta = np.full(n, -1)
    pscale = np.full(n, -1)
    sits = code < 0
    below = sits & (latent < SCALED_MIN)
    b_code = below & ((sen == 2) | (latent < np.where(sen == 1, SEN_SUPPORT_BELOW_TEST, NOT_SEN_BELOW_TEST)))
    n_code = below & ~b_code
    not_sat = n_code & (rng.random(n) < HNM_NOT_SAT_SHARE)
    code[sits] = _index(TEST_CODES, "S")
    code[b_code] = _index(TEST_CODES, "B")
    code[n_code] = _index(TEST_CODES, "N")
    code[not_sat] = _index(TEST_CODES, "A")

    meets = np.where(latent >= 99.5, _index(TEST_TA, "EXS"), _index(TEST_TA, "HNM"))
    ta[:] = meets
    ta[n_code] = np.where(rng.random(n_code.sum()) < N_WITH_EXS_SHARE, _index(TEST_TA, "EXS"), _index(TEST_TA, "HNM"))
    ta[not_sat] = _index(TEST_TA, "HNM")
    ta[b_code] = _index(TEST_TA, "BLW")
    for bound, label in reversed(PRE_KEY_STAGE_BOUNDS):
        ta[b_code & (latent >= bound)] = _index(TEST_TA, label)
    blw = b_code & (ta == _index(TEST_TA, "BLW"))
    pscale[blw] = np.where(sen[blw] == 0, _index(PSCALES, "NOTSEN"),
                           7 - np.searchsorted(-np.array(P_SCALE_BOUNDS), -latent[blw], side="right"))
    plain_absent = (non_test == _index(TEST_CODES, "A")) & (rng.random(n) < PLAIN_ABSENT_TA_SHARE)
    ta[plain_absent] = _index(TEST_TA, "A")
    ta[non_test == _index(TEST_CODES, "D")] = _index(TEST_TA, "D")
    ta[non_test == _index(TEST_CODES, "M")] = -1

    score = np.where(code == _index(TEST_CODES, "S"),
                     np.clip(np.rint(latent), SCALED_MIN, SCALED_MAX), -1).astype(np.int64)
    return score, code, ta, pscale


def writing_assessment(rng, writing_latent: np.ndarray, sen: np.ndarray, disapplied: np.ndarray):
    """KS2 writing TA (index into TEST_TA) and p-scale index (-1 null) per pupil."""
    n = len(writing_latent)
    ta = np.full(n, _index(TEST_TA, "BLW"))
    for bound, label in reversed(WRITING_BOUNDS):
        ta[writing_latent >= bound] = _index(TEST_TA, label)
    pscale = np.full(n, -1)
    blw = ta == _index(TEST_TA, "BLW")
    pscale[blw] = np.where(sen[blw] == 0, _index(PSCALES, "NOTSEN"),
                           7 - np.searchsorted(-np.array(P_SCALE_BOUNDS), -(writing_latent[blw] - 8), side="right"))
    u = rng.random(n)
    low = 0.0
    for label, rate in WRITING_NON_TA_RATES:
        hit = (u >= low) & (u < low + rate)
        ta[hit] = _index(TEST_TA, label)
        pscale[hit] = -1
        low += rate
    ta[disapplied] = _index(TEST_TA, "D")
    pscale[disapplied] = -1
    return ta, pscale


def ks2_prior_value(score, code, ta, pscale) -> np.ndarray:
    """KS2 score used as prior attainment: scaled score (S), nominal score (B, N), else NaN."""
    value = np.full(len(code), np.nan)
    sat = code == _index(TEST_CODES, "S")
    value[sat] = score[sat]
    value[code == _index(TEST_CODES, "N")] = NOMINAL_N_CODE
    below = code == _index(TEST_CODES, "B")
    for label, nominal in NOMINAL_BY_TA.items():
        value[below & (ta == _index(TEST_TA, label))] = nominal
    for label, nominal in NOMINAL_BY_PSCALE.items():
        value[below & (ta == _index(TEST_TA, "BLW")) & (pscale == _index(PSCALES, label))] = nominal
    return value


def _logistic(x):
    return 1.0 / (1.0 + np.exp(-x))


def attainment8_slots(rng, a8_latent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split each pupil's A8 (clipped to 0-90) into 8 slot points, in cents-exact 2-dp values.

    Returns (slots, attainment8): slots has one row per pupil, columns english, maths, ebacc_1..3,
    open_1..3 (0-9; unfilled optional slots are 0, filled slots ordered high to low); attainment8
    is 2*english + 2*maths + the six others, equal to the clipped latent rounded to 0.01 (except
    in rare cases where the last cent cannot be placed).
    """
    n = len(a8_latent)
    target_cents = np.rint(np.clip(a8_latent, 0.0, A8_MAX) * 100).astype(np.int64)
    mean_slot = target_cents / 1000.0
    relative = {k: np.interp(mean_slot, SLOT_ANCHORS, v) for k, v in SLOT_RELATIVE.items()}
    fill_p = _logistic(SLOT_FILL_LOG_ODDS[0] + SLOT_FILL_LOG_ODDS[1] * mean_slot)
    filled_ebacc = rng.binomial(3, fill_p)
    filled_open = rng.binomial(3, fill_p)
    too_few = 9 * (4 + filled_ebacc + filled_open) * 100 < target_cents * 1.02
    filled_ebacc[too_few] = 3
    filled_open[too_few] = 3
    slot_in_bucket = np.array([0, 1, 2])
    proposal = np.column_stack([
        relative["english"], relative["maths"],
        relative["ebacc"][:, None] * (slot_in_bucket < filled_ebacc[:, None]),
        relative["open"][:, None] * (slot_in_bucket < filled_open[:, None]),
    ]) * rng.lognormal(0.0, SLOT_NOISE_SD, (n, 8))
    proposal *= (target_cents > 0)[:, None]

    target = target_cents / 100.0
    low, high = np.zeros(n), np.full(n, 200.0)
    for _ in range(50):  # bisection for the common multiplier of the proposals
        mid = (low + high) / 2
        total = (np.minimum(9.0, mid[:, None] * proposal) * SLOT_WEIGHTS).sum(axis=1)
        too_low = total < target
        low = np.where(too_low, mid, low)
        high = np.where(too_low, high, mid)
    slots = np.minimum(9.0, high[:, None] * proposal)
    slots[:, 2:5] = -np.sort(-slots[:, 2:5], axis=1)
    slots[:, 5:8] = -np.sort(-slots[:, 5:8], axis=1)
    cents = np.rint(slots * 100).astype(np.int64)

    # Put the rounding remainder (a few cents) on one single-weighted filled slot with room.
    remainder = target_cents - cents @ SLOT_WEIGHTS
    single = cents[:, 2:]
    room = np.where(single > 0, np.where(remainder[:, None] > 0, 900 - single, single), -1)
    pick = np.argmax(room, axis=1)
    fits = room[np.arange(n), pick] >= np.abs(remainder)
    cents[np.arange(n)[fits], 2 + pick[fits]] += remainder[fits]
    # No single slot can take it (no optional slot filled): English takes it, to within a cent.
    stuck = ~fits
    cents[stuck, 0] = np.clip(cents[stuck, 0] + remainder[stuck] // 2, 0, 900)
    return cents / 100.0, (cents @ SLOT_WEIGHTS) / 100.0


def ebacc_subject_points(rng, attainment8: np.ndarray) -> dict[str, np.ndarray]:
    """Best science / humanities / languages points per pupil; NaN where not entered."""
    mean_slot = attainment8 / 10.0
    out = {}
    for subject, ((a, b), (factor, noise, step)) in EBACC_SUBJECTS.items():
        entered = rng.random(len(mean_slot)) < _logistic(a + b * (mean_slot - 4.7))
        points = np.clip(factor * mean_slot + rng.normal(0.0, noise, len(mean_slot)), 1.0, 9.0)
        points = np.round(points / step) * step
        out[subject] = np.where(entered, points, np.nan)
    return out
