"""Pupil characteristics (the school census) for one block of schools.

One entry per pupil in a key stage cohort. Shares follow England: gender ~50/50; SEN N ~83%,
K ~13%, E ~4% (mostly E in special schools); 19 ethnic groups with the school's mix; FSM ~24%
and disadvantaged ~30%, both rising with IDACI (itself clustered by school); EAL ~20% driven by
ethnicity; mobile ~5%; ever in care ~1%. Recent arrivals from overseas (EAL, non-English-speaking
country, first admitted on or after 1 September of year-2) make up ~0.5-1% of a cohort.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from valueadded.synth.dates import calendar_month, days
from valueadded.synth.geography import ETHNIC_GROUPS

FEMALE_SHARE = 0.49

# IDACI: logit(idaci) ~ normal, centred on the school's deprivation; mean ~0.14.
IDACI_LOGIT_MEAN = -2.07
IDACI_PER_DEPRIVATION = 0.45
IDACI_LOGIT_SD = 0.8
# FSM log-odds: base + slope on the pupil's IDACI logit + ethnic shift (+ special, - independent).
FSM_LOG_ODDS = -1.4
FSM_PER_IDACI_LOGIT = 1.1
FSM_SPECIAL_SHIFT = 0.6
FSM_INDEPENDENT_SHIFT = -4.0
FSM_ETHNIC_SHIFT = {
    "WIRI": -0.3, "WIRT": 1.5, "WOTH": -0.1, "WROM": 1.2, "MWBC": 0.7, "MWBA": 0.3, "MWAS": -0.3,
    "MOTH": 0.3, "AIND": -0.9, "APKN": 0.3, "ABAN": 0.3, "AOTH": -0.1, "BCRB": 0.6, "BAFR": 0.3,
    "BOTH": 0.5, "CHNE": -0.9, "OOTH": 0.4, "UNCL": 0.2,
}
# Disadvantaged = FSM now, or FSM in the last six years (log-odds below), or ever in care.
EVER6_NOT_NOW_LOG_ODDS = -2.55
EVER6_PER_IDACI_LOGIT = 0.6
EAL_BY_ETHNICITY = {
    "WBRI": 0.005, "WIRI": 0.03, "WIRT": 0.05, "WOTH": 0.75, "WROM": 0.8, "MWBC": 0.03, "MWBA": 0.15,
    "MWAS": 0.25, "MOTH": 0.3, "AIND": 0.75, "APKN": 0.8, "ABAN": 0.9, "AOTH": 0.8, "BCRB": 0.05,
    "BAFR": 0.6, "BOTH": 0.5, "CHNE": 0.75, "OOTH": 0.8, "UNCL": 0.3,
}
# SEN (K support, E plan): base shares by provision, multiplied by gender and FSM factors.
SEN_SHARES = {"mainstream": (0.135, 0.030), "special": (0.10, 0.87), "independent": (0.10, 0.010)}
SEN_BOY_FACTOR, SEN_GIRL_FACTOR = (1.35, 1.45), (0.63, 0.53)
SEN_FSM_FACTOR, SEN_NOT_FSM_FACTOR = 1.5, 0.84
IN_CARE_BASE, IN_CARE_IF_FSM = 0.004, 0.025
MOBILE_BASE, MOBILE_IF_FSM, MOBILE_IF_IN_CARE, MOBILE_IF_RECENT_ARRIVAL = 0.038, 0.03, 0.1, 0.3

# Arrivals from overseas, by EAL: (recent share, earlier share, share of either from a country
# with English as an official language). Recent = first admitted on/after 1 Sep of year-2;
# a few more arrive in the summer just before that date (not discountable).
ARRIVALS_IF_EAL = (0.038, 0.15, 0.12)
ARRIVALS_IF_NOT_EAL = (0.002, 0.012, 0.85)
ARRIVED_JUST_BEFORE_CUTOFF_SHARE = 0.1
# Other pupils' first admission: reception start (+0-6 days), nursery a year earlier, or later.
NURSERY_SHARE = 0.10
LATER_ENTRY_SHARE = 0.025
MOBILE_LATER_ENTRY_SHARE = 0.4

# Academic-year offsets for a cohort taking its key stage in the summer of `year`.
BIRTH_YEAR_OFFSET = {"ks2": 11, "ks4": 16}  # born 1 Sep (year-offset) .. 31 Aug (year-offset+1)
RECEPTION_YEAR_OFFSET = {"ks2": 7, "ks4": 12}  # reception starts 1 Sep (year-offset)
LAST_ARRIVAL_DAY = (5, 15)  # (month, day) in `year`: after this pupils are not in the cohort


@dataclass
class Characteristics:
    """Census characteristics of one block's pupils in one key stage: one entry per pupil."""

    school: np.ndarray  # int index into Schools
    female: np.ndarray
    date_of_birth: np.ndarray  # int days since epoch
    age_in_months: np.ndarray  # 11 September-born .. 0 August-born
    sen: np.ndarray  # 0 N, 1 K, 2 E
    ethnicity: np.ndarray  # index into ETHNIC_GROUPS
    fsm: np.ndarray
    disadvantaged: np.ndarray
    eal: np.ndarray
    mobile: np.ndarray
    ever_in_care: np.ndarray
    idaci: np.ndarray
    arrived_from_overseas: np.ndarray
    country_english_official: np.ndarray  # 1 yes, 0 no, -1 null (not from overseas)
    first_admission_date: np.ndarray  # int days since epoch
    discountable: np.ndarray  # recent EAL arrival from a non-English-speaking country

    def __len__(self) -> int:
        return len(self.school)


def _logistic(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _ethnicity(rng, school_mix: np.ndarray) -> np.ndarray:
    cumulative = np.cumsum(school_mix, axis=1)
    u = rng.random(len(school_mix)) * cumulative[:, -1]
    return np.minimum((u[:, None] > cumulative).sum(axis=1), len(ETHNIC_GROUPS) - 1)


def _sen(rng, provision_kind: np.ndarray, female: np.ndarray, fsm: np.ndarray) -> np.ndarray:
    base = np.array([SEN_SHARES[k] for k in ("mainstream", "special", "independent")])[provision_kind]
    factor = np.where(female[:, None], SEN_GIRL_FACTOR, SEN_BOY_FACTOR)
    factor = factor * np.where(fsm, SEN_FSM_FACTOR, SEN_NOT_FSM_FACTOR)[:, None]
    # Special schools are mostly plans whatever the pupil: only the mainstream shares are scaled.
    probability = np.where((provision_kind == 1)[:, None], base, np.minimum(base * factor, 0.45))
    u = rng.random(len(female))
    return np.where(u < probability[:, 1], 2, np.where(u < probability.sum(axis=1), 1, 0))


def draw_characteristics(rng: np.random.Generator, school: np.ndarray, schools, year: int,
                         key_stage: str) -> Characteristics:
    """Draw the census characteristics of the pupils of `school` (one entry per pupil)."""
    n = len(school)
    special = schools.is_special[school]
    independent = schools.is_independent[school]
    provision_kind = np.where(special, 1, np.where(independent, 2, 0))

    female = rng.random(n) < FEMALE_SHARE
    birth_start = days(dt.date(year - BIRTH_YEAR_OFFSET[key_stage], 9, 1))
    birth_end = days(dt.date(year - BIRTH_YEAR_OFFSET[key_stage] + 1, 8, 31))
    date_of_birth = rng.integers(birth_start, birth_end + 1, n)
    age_in_months = (8 - calendar_month(date_of_birth)) % 12  # September 11 .. August 0

    ethnicity = _ethnicity(rng, schools.ethnic_mix[school])
    eal = rng.random(n) < np.array([EAL_BY_ETHNICITY[g] for g in ETHNIC_GROUPS])[ethnicity]

    idaci_logit = (IDACI_LOGIT_MEAN + IDACI_PER_DEPRIVATION * schools.deprivation[school]
                   + rng.normal(0, IDACI_LOGIT_SD, n))
    idaci = np.round(np.clip(_logistic(idaci_logit), 0.001, 0.999), 3)
    ethnic_shift = np.array([FSM_ETHNIC_SHIFT.get(g, 0.0) for g in ETHNIC_GROUPS])[ethnicity]
    fsm_log_odds = (FSM_LOG_ODDS + FSM_PER_IDACI_LOGIT * (idaci_logit - IDACI_LOGIT_MEAN) + ethnic_shift
                    + np.where(special, FSM_SPECIAL_SHIFT, 0.0) + np.where(independent, FSM_INDEPENDENT_SHIFT, 0.0))
    fsm = rng.random(n) < _logistic(fsm_log_odds)
    ever_in_care = rng.random(n) < np.where(independent, 0.0, IN_CARE_BASE + IN_CARE_IF_FSM * fsm)
    ever6 = rng.random(n) < _logistic(EVER6_NOT_NOW_LOG_ODDS + EVER6_PER_IDACI_LOGIT * (idaci_logit - IDACI_LOGIT_MEAN))
    disadvantaged = fsm | ever_in_care | (ever6 & ~independent)
    sen = _sen(rng, provision_kind, female, fsm)

    # Arrivals from overseas and first admission to an English school.
    recent_share, earlier_share, official_share = (
        np.where(eal, a, b) for a, b in zip(ARRIVALS_IF_EAL, ARRIVALS_IF_NOT_EAL))
    u = rng.random(n)
    recent = u < recent_share
    earlier = ~recent & (u < recent_share + earlier_share)
    arrived = recent | earlier
    official = rng.random(n) < official_share
    country_english_official = np.where(arrived, official.astype(np.int8), -1)

    cutoff = days(dt.date(year - 2, 9, 1))
    reception = days(dt.date(year - RECEPTION_YEAR_OFFSET[key_stage], 9, 1))
    last_day = days(dt.date(year, *LAST_ARRIVAL_DAY))
    mobile = rng.random(n) < (MOBILE_BASE + MOBILE_IF_FSM * fsm + MOBILE_IF_IN_CARE * ever_in_care
                              + MOBILE_IF_RECENT_ARRIVAL * recent)
    first_admission = reception + rng.integers(0, 7, n)
    entry = rng.random(n)
    nursery = entry < NURSERY_SHARE
    first_admission[nursery] = reception - 365 + rng.integers(0, 7, nursery.sum())
    later = (entry > 1 - np.where(mobile, MOBILE_LATER_ENTRY_SHARE, LATER_ENTRY_SHARE)) | earlier
    first_admission[later] = rng.integers(reception + 30, cutoff, later.sum())
    just_before = recent & (rng.random(n) < ARRIVED_JUST_BEFORE_CUTOFF_SHARE)
    first_admission[recent] = rng.integers(cutoff, last_day, recent.sum())
    first_admission[just_before] = rng.integers(cutoff - 90, cutoff, just_before.sum())

    discountable = arrived & eal & (country_english_official == 0) & (first_admission >= cutoff)
    return Characteristics(
        school=school, female=female, date_of_birth=date_of_birth, age_in_months=age_in_months,
        sen=sen, ethnicity=ethnicity, fsm=fsm, disadvantaged=disadvantaged, eal=eal, mobile=mobile,
        ever_in_care=ever_in_care, idaci=idaci, arrived_from_overseas=arrived,
        country_english_official=country_english_official, first_admission_date=first_admission,
        discountable=discountable,
    )
