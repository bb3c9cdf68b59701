"""The known model the generated outcomes come from: terms, true coefficients, variances.

Each outcome is a two-level random-intercept model: outcome = X beta + u_school + e_pupil, where
X holds the CVA terms below (named as the CVA model configuration names them), u_school is
normal with variance sigma2_school (for a school in a trust, a trust effect shared by the trust's
schools plus the school's own part, in the ratio TRUST_SHARE_OF_SCHOOL_VARIANCE), and e_pupil
is normal with variance sigma2_pupil (for A8 times a squared multiplier that shrinks towards the
ends of the 0-90 scale, PUPIL_SD_PROFILE). KS2 has two outcomes (reading and maths scaled
scores, correlated) and their average; KS4 has Attainment 8.

Prior attainment effects are set on a standardised prior s = (prior_aps - centre) / spread and
turned into coefficients on the raw terms, so the same effect sizes serve both KS1 eras.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from valueadded.synth.geography import ETHNIC_GROUPS, ETHNIC_REFERENCE

OUTCOMES = ("ks2_reading", "ks2_maths", "ks4_attainment8")
DERIVED_OUTCOME = "ks2_average"  # mean of ks2_reading and ks2_maths

# Standardisation of the prior APS (centre, spread) per prior-attainment scale.
PRIOR_SCALES = {"ks1_framework": (7.4, 1.6), "ks1_levels": (15.8, 4.0), "ks2_scaled": (105.0, 7.5)}

# Outcome of a reference pupil (WBRI boy, no SEN/FSM/EAL, August-born, IDACI 0) at the centre
# prior, in a school of centre mean prior and typical spread; then change per prior SD and per
# prior SD squared, per (outcome, prior scale). KS2 values give reading/maths means ~105/104 and
# pre-key-stage KS1 pupils mostly below the test; KS4 values are calibrated so that A8 means per
# prior attainment group track DfE's 2024 table.
PRIOR_CURVE = {
    ("ks2_reading", "ks1_framework"): (105.0, 7.0, -2.15),
    ("ks2_maths", "ks1_framework"): (104.6, 7.2, -2.2),
    ("ks2_reading", "ks1_levels"): (105.4, 6.5, -0.40),
    ("ks2_maths", "ks1_levels"): (104.9, 6.4, -0.35),
    ("ks4_attainment8", "ks2_scaled"): (48.14, 14.11, 1.83),
}
# Effect of a subject's prior minus the prior APS, per prior SD: (reading term, maths term).
SUBJECT_DEVIATION = {
    "ks2_reading": (2.4, -0.6),
    "ks2_maths": (-0.7, 3.2),
    "ks4_attainment8": (1.9, 0.0),  # two-subject KS2 prior: the maths term is minus the reading term
}
# EAL effect at the centre prior and its change per prior SD (the taper).
EAL_TAPER = {"ks2_reading": (1.2, -0.55), "ks2_maths": (1.6, -0.5), "ks4_attainment8": (2.6, -1.2)}
# School-level prior attainment (KS2-4 only): per point of the school mean / SD of prior APS.
SCHOOL_PRIOR = {"ks4_attainment8": (0.40, -0.25)}
TYPICAL_SCHOOL_PRIOR_SD = 7.0

#                     ks2_reading ks2_maths ks4_attainment8
CHARACTERISTIC_EFFECTS = {
    "female":        (0.8, -0.9, 2.8),
    "sen_support":   (-2.3, -2.1, -3.5),
    "sen_plan":      (-4.5, -4.2, -6.0),
    "fsm":           (-1.4, -1.3, -5.0),
    "mobile":        (-1.0, -1.0, -3.0),
    "age_in_months": (-0.08, -0.08, -0.10),
    "ever_in_care":  (-1.2, -1.3, -6.0),
    "idaci":         (-3.0, -3.2, -13.0),
}
# Ethnic group (vs WBRI) and FSM x ethnic group (vs FSM WBRI) effects.
ETHNIC_EFFECTS = {
    "WIRI": (0.3, 0.2, 0.5), "WIRT": (-2.0, -2.2, -6.0), "WOTH": (0.6, 1.2, 3.0),
    "WROM": (-2.2, -2.4, -7.0), "MWBC": (-0.2, -0.4, -0.5), "MWBA": (0.5, 0.6, 1.5),
    "MWAS": (0.7, 0.8, 2.0), "MOTH": (0.5, 0.5, 1.5), "AIND": (1.2, 1.8, 5.0),
    "APKN": (0.6, 1.0, 2.5), "ABAN": (1.0, 1.4, 4.0), "AOTH": (1.2, 2.0, 5.0),
    "BCRB": (0.0, -0.3, 0.0), "BAFR": (1.2, 1.2, 4.0), "BOTH": (0.8, 0.8, 2.5),
    "CHNE": (1.5, 3.0, 7.0), "OOTH": (0.9, 1.2, 3.5), "UNCL": (-0.3, -0.3, -1.0),
}
FSM_ETHNIC_INTERACTIONS = {
    "WIRI": (0.3, 0.3, 1.0), "WIRT": (0.0, 0.0, 0.0), "WOTH": (0.8, 0.9, 3.0),
    "WROM": (0.0, 0.0, 0.0), "MWBC": (0.2, 0.2, 0.5), "MWBA": (0.5, 0.5, 1.5),
    "MWAS": (0.5, 0.5, 1.5), "MOTH": (0.6, 0.6, 2.0), "AIND": (0.8, 0.9, 3.0),
    "APKN": (0.9, 0.9, 3.0), "ABAN": (1.0, 1.0, 3.5), "AOTH": (0.9, 1.0, 3.0),
    "BCRB": (0.3, 0.3, 1.0), "BAFR": (1.0, 1.0, 3.5), "BOTH": (0.8, 0.8, 2.5),
    "CHNE": (1.0, 1.0, 3.0), "OOTH": (0.9, 0.9, 3.0), "UNCL": (0.3, 0.3, 1.0),
}
# (school SD incl. trust part, pupil SD) of each outcome.
STANDARD_DEVIATIONS = {"ks2_reading": (1.8, 6.0), "ks2_maths": (2.0, 5.6), "ks4_attainment8": (3.0, 12.5)}
# Pupil residual SD multiplier as a function of the pupil's conditional mean (X beta + school
# effect), piecewise linear, flat beyond the ends. A8 residuals shrink towards the floor and
# ceiling of the 0-90 scale, as in real data; with a constant SD ~4% of pupils would fall outside
# 0-90. E[outcome | X, school] = X beta + school effect is unaffected.
PUPIL_SD_PROFILE = {"ks4_attainment8": ((5.0, 0.2), (35.0, 1.0), (55.0, 1.0), (88.0, 0.1))}
TRUST_SHARE_OF_SCHOOL_VARIANCE = 0.2
KS2_SCHOOL_CORRELATION = 0.6  # between a school's reading and maths effects (own and trust parts)
KS2_PUPIL_CORRELATION = 0.5  # between a pupil's reading and maths residuals
TRUST_KS2_KS4_CORRELATION = 0.4

NON_REFERENCE_GROUPS = tuple(g for g in ETHNIC_GROUPS if g != ETHNIC_REFERENCE)
PRIOR_TERMS = ("intercept", "prior_aps", "prior_aps_sq", "prior_reading_minus_aps", "prior_maths_minus_aps")
CHARACTERISTIC_TERMS = (
    "female", "sen_support", "sen_plan", *(f"eth_{g}" for g in NON_REFERENCE_GROUPS), "fsm",
    *(f"fsm_x_eth_{g}" for g in NON_REFERENCE_GROUPS), "eal", "eal_x_prior_aps", "mobile",
    "age_in_months", "ever_in_care", "idaci",
)
SCHOOL_TERMS = ("school_mean_prior_aps", "school_sd_prior_aps")

TERM_DEFINITIONS = {
    "intercept": "1",
    "prior_aps": "KS2 outcomes: KS1 APS = ((reading + writing)/2 + maths)/2 in KS1 points; KS4: mean of "
                 "KS2 reading and maths scores (scaled score for S, nominal score for B and N codes)",
    "prior_aps_sq": "prior_aps ** 2",
    "prior_reading_minus_aps": "KS2 outcomes: KS1 reading points - prior_aps; KS4: KS2 reading score - prior_aps",
    "prior_maths_minus_aps": "KS2 outcomes: KS1 maths points - prior_aps (KS4: omitted, equals "
                             "-prior_reading_minus_aps)",
    "female": "gender == 'F'",
    "sen_support": "sen == 'K'",
    "sen_plan": "sen == 'E'",
    "eth_<CODE>": "ethnicity == CODE (reference WBRI)",
    "fsm": "fsm",
    "fsm_x_eth_<CODE>": "fsm and ethnicity == CODE (reference WBRI)",
    "eal": "eal",
    "eal_x_prior_aps": "eal * prior_aps",
    "mobile": "mobile",
    "age_in_months": "11 for a September birthday (oldest) down to 0 for August (youngest)",
    "ever_in_care": "ever_in_care",
    "idaci": "idaci score 0-1",
    "school_mean_prior_aps": "mean prior_aps of the school's pupils in the cohort (input files, before "
                             "amendments) who have an observed prior; 105 if none",
    "school_sd_prior_aps": "population SD (ddof=0) of the same; 0 if fewer than two",
}


@dataclass(frozen=True)
class OutcomeModel:
    """The true model of one outcome: term names, coefficients and variance components."""

    outcome: str
    key_stage: str
    terms: tuple[str, ...]
    coefficients: dict[str, float]
    sigma2_school: float
    sigma2_trust: float
    sigma2_pupil: float  # at SD multiplier 1 (see pupil_sd_profile)
    pupil_sd_profile: tuple[tuple[float, float], ...] | None = None
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def beta(self) -> np.ndarray:
        return np.array([self.coefficients[t] for t in self.terms])

    def pupil_sd_multiplier(self, conditional_mean: np.ndarray) -> np.ndarray:
        """Per pupil: multiplier of the pupil residual SD (1 unless the model has a profile)."""
        if self.pupil_sd_profile is None:
            return np.ones(len(conditional_mean))
        at, multiplier = zip(*self.pupil_sd_profile)
        return np.interp(conditional_mean, at, multiplier)

    def to_json(self, mean_sd_multiplier_sq: float = 1.0) -> dict:
        """The model as JSON; `mean_sd_multiplier_sq` is the cohort mean of the squared multiplier."""
        return {
            "outcome": self.outcome,
            "key_stage": self.key_stage,
            "terms": list(self.terms),
            "coefficients": self.coefficients,
            "sigma2_school": self.sigma2_school,
            "sigma2_trust": self.sigma2_trust,
            "sigma2_school_own_in_trust": self.sigma2_school - self.sigma2_trust,
            "sigma2_pupil": self.sigma2_pupil * mean_sd_multiplier_sq,
            "sigma2_pupil_at_multiplier_1": self.sigma2_pupil,
            "pupil_sd_multiplier_by_conditional_mean": None if self.pupil_sd_profile is None else [
                list(point) for point in self.pupil_sd_profile],
            "notes": self.notes,
        }


def _column(effects: dict, outcome: str) -> dict[str, float]:
    return {k: v[OUTCOMES.index(outcome)] for k, v in effects.items()}


def build_model(outcome: str, prior_scale: str) -> OutcomeModel:
    """The true model for one outcome, with prior effects converted to raw-term coefficients."""
    centre, spread = PRIOR_SCALES[prior_scale]
    at_centre, per_sd, per_sd_sq = PRIOR_CURVE[(outcome, prior_scale)]
    reading_dev, maths_dev = SUBJECT_DEVIATION[outcome]
    eal_centre, eal_per_sd = EAL_TAPER[outcome]
    school_mean, school_sd = SCHOOL_PRIOR.get(outcome, (0.0, 0.0))
    ks4 = outcome.startswith("ks4")

    # f(a) = at_centre + per_sd*s + per_sd_sq*s^2, s = (a - centre)/spread, expanded in powers of a.
    quadratic = per_sd_sq / spread**2
    linear = per_sd / spread - 2 * per_sd_sq * centre / spread**2
    constant = at_centre - per_sd * centre / spread + per_sd_sq * centre**2 / spread**2
    constant -= school_mean * centre + school_sd * TYPICAL_SCHOOL_PRIOR_SD
    coefficients = {
        "intercept": constant,
        "prior_aps": linear,
        "prior_aps_sq": quadratic,
        "prior_reading_minus_aps": reading_dev / spread,
    }
    if not ks4:
        coefficients["prior_maths_minus_aps"] = maths_dev / spread
    characteristics = _column(CHARACTERISTIC_EFFECTS, outcome)
    ethnic = _column(ETHNIC_EFFECTS, outcome)
    fsm_ethnic = _column(FSM_ETHNIC_INTERACTIONS, outcome)
    for term in CHARACTERISTIC_TERMS:
        if term.startswith("eth_"):
            coefficients[term] = ethnic[term[4:]]
        elif term.startswith("fsm_x_eth_"):
            coefficients[term] = fsm_ethnic[term[10:]]
        elif term == "eal":
            coefficients[term] = eal_centre - eal_per_sd * centre / spread
        elif term == "eal_x_prior_aps":
            coefficients[term] = eal_per_sd / spread
        else:
            coefficients[term] = characteristics[term]
    notes = {"prior_scale": prior_scale}
    if ks4:
        coefficients["school_mean_prior_aps"] = school_mean
        coefficients["school_sd_prior_aps"] = school_sd
        notes["omitted_terms"] = "prior_maths_minus_aps (identically -prior_reading_minus_aps)"
    else:
        notes["omitted_terms"] = "school_mean_prior_aps, school_sd_prior_aps (KS2-4 only, SPEC 2.3)"
    school_sd_outcome, pupil_sd = STANDARD_DEVIATIONS[outcome]
    terms = tuple(t for t in (*PRIOR_TERMS, *CHARACTERISTIC_TERMS, *SCHOOL_TERMS) if t in coefficients)
    return OutcomeModel(
        outcome=outcome, key_stage=outcome[:3], terms=terms,
        coefficients={t: float(coefficients[t]) for t in terms},
        sigma2_school=school_sd_outcome**2,
        sigma2_trust=TRUST_SHARE_OF_SCHOOL_VARIANCE * school_sd_outcome**2,
        sigma2_pupil=pupil_sd**2, pupil_sd_profile=PUPIL_SD_PROFILE.get(outcome), notes=notes,
    )


def average_model(reading: OutcomeModel, maths: OutcomeModel) -> OutcomeModel:
    """The implied true model of the mean of the KS2 reading and maths outcomes."""
    def mean_var(a: float, b: float, rho: float) -> float:
        return (a + b + 2 * rho * np.sqrt(a * b)) / 4

    return OutcomeModel(
        outcome=DERIVED_OUTCOME, key_stage="ks2", terms=reading.terms,
        coefficients={t: (reading.coefficients[t] + maths.coefficients[t]) / 2 for t in reading.terms},
        sigma2_school=mean_var(reading.sigma2_school, maths.sigma2_school, KS2_SCHOOL_CORRELATION),
        sigma2_trust=mean_var(reading.sigma2_trust, maths.sigma2_trust, KS2_SCHOOL_CORRELATION),
        sigma2_pupil=mean_var(reading.sigma2_pupil, maths.sigma2_pupil, KS2_PUPIL_CORRELATION),
        notes={**reading.notes, "derived": "mean of ks2_reading and ks2_maths"},
    )


def design_matrix(terms: tuple[str, ...], inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The model's X for a set of pupils: one row per pupil, one column per term.

    `inputs` holds per-pupil arrays: prior_aps, prior_reading_minus_aps, prior_maths_minus_aps,
    female, sen (0 N, 1 K, 2 E), ethnicity (index into ETHNIC_GROUPS), fsm, eal, mobile,
    age_in_months, ever_in_care, idaci, school_mean_prior_aps, school_sd_prior_aps.
    """
    n = len(inputs["prior_aps"])
    x = np.empty((n, len(terms)))
    for j, term in enumerate(terms):
        if term == "intercept":
            x[:, j] = 1.0
        elif term == "prior_aps_sq":
            x[:, j] = inputs["prior_aps"] ** 2
        elif term == "sen_support":
            x[:, j] = inputs["sen"] == 1
        elif term == "sen_plan":
            x[:, j] = inputs["sen"] == 2
        elif term.startswith("eth_"):
            x[:, j] = inputs["ethnicity"] == ETHNIC_GROUPS.index(term[4:])
        elif term.startswith("fsm_x_eth_"):
            x[:, j] = inputs["fsm"] & (inputs["ethnicity"] == ETHNIC_GROUPS.index(term[10:]))
        elif term == "eal_x_prior_aps":
            x[:, j] = inputs["eal"] * inputs["prior_aps"]
        else:
            x[:, j] = inputs[term]
    return x


def draw_school_effects(rng: np.random.Generator, key_stage: np.ndarray, current_trust: np.ndarray,
                        n_trusts: int) -> dict[str, np.ndarray]:
    """True school effects per outcome, one entry per school; also each school's trust part.

    Returns arrays keyed `<outcome>` (total effect) and `<outcome>_trust` (trust part, 0 when the
    school is in no trust) for ks2_reading, ks2_maths, ks4_attainment8; a school only has
    non-zero effects for its own key stage's outcomes.
    """
    rho, kk = KS2_SCHOOL_CORRELATION, TRUST_KS2_KS4_CORRELATION
    trust_corr = np.array([[1.0, rho, kk], [rho, 1.0, kk], [kk, kk, 1.0]])
    trust_z = rng.standard_normal((n_trusts, 3)) @ np.linalg.cholesky(trust_corr).T
    n = len(key_stage)
    own_z = rng.standard_normal((n, 2))
    own_z[:, 1] = rho * own_z[:, 0] + np.sqrt(1 - rho**2) * own_z[:, 1]
    in_trust = current_trust >= 0
    effects = {}
    for k, outcome in enumerate(OUTCOMES):
        school_sd = STANDARD_DEVIATIONS[outcome][0]
        trust_sd = np.sqrt(TRUST_SHARE_OF_SCHOOL_VARIANCE) * school_sd
        own_sd = np.where(in_trust, np.sqrt(school_sd**2 - trust_sd**2), school_sd)
        trust_part = np.where(in_trust, trust_sd * trust_z[np.maximum(current_trust, 0), k], 0.0)
        own = own_sd * own_z[:, min(k, 1)]  # a school has one key stage: KS4 may reuse a KS2 draw
        applies = key_stage == outcome[:3]
        effects[outcome] = np.where(applies, own + trust_part, 0.0)
        effects[f"{outcome}_trust"] = np.where(applies, trust_part, 0.0)
    return effects
