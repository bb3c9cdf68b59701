"""The generated multi-academy trusts and which schools belong to them, when.

One membership row per school per spell in a trust. About 2,500 trusts (at scale 1) hold about
half of the state-funded schools; trust sizes are skewed (many of 1-5 schools, a few of 20-60)
and each trust draws most of its schools from one authority, then its region. Join dates spread
over the last ~12 years, some in the current academic year; a few schools left their trust, most
of those moving to another trust in the same region (a new spell).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from valueadded.io.schemas import TRUST_MEMBERSHIP
from valueadded.synth.dates import days, first_of_month
from valueadded.synth.geography import LocalAuthorities
from valueadded.synth.schools import NAME_STEMS, Schools

TRUSTS_AT_SCALE_1 = 2_500
MIN_TRUSTS = 4
# Trust size (schools) ~ ceil(lognormal), clipped; mean ~4 schools.
TRUST_SIZE_LOG_MEDIAN = np.log(2.2)
TRUST_SIZE_LOG_SD = 1.0
TRUST_SIZE_MAX = 60
# Never put more than this share of the state-funded schools into trusts.
MAX_SHARE_IN_TRUSTS = 0.55
# Chance each further school of a trust comes from its home authority (else its region).
SAME_LA_SHARE = 0.7

HISTORY_YEARS = 12  # join dates spread over the last ~12 academic years
JOIN_DELAY_MEAN_YEARS = 2.0  # schools join a trust some time after it was founded
JOINED_THIS_YEAR_SHARE = 0.06
LEFT_TRUST_SHARE = 0.03
REBROKERED_SHARE = 0.7  # of schools that left, the share that moved to another trust

TRUST_KINDS = (
    "Learning Trust", "Academy Trust", "Education Trust", "Multi Academy Trust",
    "Schools Partnership", "Catholic Academy Trust", "Diocesan Academies Trust", "Academies",
)

@dataclass(frozen=True)
class Trusts:
    """Trusts (one entry per trust) and memberships (one entry per school per spell)."""

    trust_id: np.ndarray  # str
    trust_name: np.ndarray  # str
    member_school: np.ndarray  # int index into Schools
    member_trust: np.ndarray  # int index into trust_id
    join_days: np.ndarray  # int days since epoch
    leave_days: np.ndarray  # int days since epoch, -1 while still a member
    current_trust: np.ndarray  # per school: trust index at the end of the academic year, -1 if none


def _trust_names(rng: np.random.Generator, n: int, las: LocalAuthorities, home_la: np.ndarray) -> np.ndarray:
    place = np.where(rng.random(n) < 0.4, las.name[home_la],
                     np.array(NAME_STEMS, dtype=object)[rng.integers(0, len(NAME_STEMS), n)])
    kind = np.array(TRUST_KINDS, dtype=object)[rng.integers(0, len(TRUST_KINDS), n)]
    names, seen = [], {}
    for p, k in zip(place, kind):
        base = f"{p} {k}"
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base} {seen[base]}")
    return np.array(names, dtype=object)


def build_trusts(schools: Schools, las: LocalAuthorities, year: int, scale: float,
                 rng: np.random.Generator) -> Trusts:
    """Form trusts from state-funded schools and date every membership spell."""
    eligible = np.flatnonzero(~schools.is_independent)
    n_trusts = max(MIN_TRUSTS, round(TRUSTS_AT_SCALE_1 * scale))
    sizes = np.clip(np.ceil(rng.lognormal(TRUST_SIZE_LOG_MEDIAN, TRUST_SIZE_LOG_SD, n_trusts)), 1, TRUST_SIZE_MAX)
    capacity = int(MAX_SHARE_IN_TRUSTS * len(eligible))
    if sizes.sum() > capacity:
        sizes = np.maximum(1, np.floor(sizes * capacity / sizes.sum()))
    sizes = sizes.astype(np.int64)

    # Shuffled pools of eligible schools per authority; a trust takes from its home pool first.
    pools = {la: list(rng.permutation(eligible[schools.la[eligible] == la])) for la in range(len(las))}
    la_weights = np.array([len(pools[la]) for la in range(len(las))], dtype=float)
    home_la = rng.choice(len(las), size=n_trusts, p=la_weights / la_weights.sum())
    member_school, member_trust = [], []
    for trust in rng.permutation(n_trusts):
        home = home_la[trust]
        same_region = np.flatnonzero(las.region == las.region[home])
        for _ in range(sizes[trust]):
            if pools[home] and (not member_school or rng.random() < SAME_LA_SHARE):
                source = home
            else:
                candidates = [la for la in rng.permutation(same_region) if pools[la]]
                if not candidates:
                    candidates = [la for la in range(len(las)) if pools[la]]
                if not candidates:
                    break
                source = candidates[0]
            member_school.append(pools[source].pop())
            member_trust.append(trust)
    member_school = np.array(member_school, dtype=np.int64)
    member_trust = np.array(member_trust, dtype=np.int64)
    n = len(member_school)

    year_start = days(dt.date(year - 1, 9, 1))
    year_end = days(dt.date(year, 8, 31))
    history_start = days(dt.date(year - 1 - HISTORY_YEARS, 9, 1))
    founded = rng.integers(history_start, year_start, n_trusts)
    delay = rng.exponential(JOIN_DELAY_MEAN_YEARS * 365.25, n).astype(np.int64)
    join = np.minimum(founded[member_trust] + delay, year_start - 1)
    this_year = rng.random(n) < JOINED_THIS_YEAR_SHARE
    join[this_year] = rng.integers(year_start, year_end - 31, this_year.sum())
    join = first_of_month(join)

    # A few schools left: leave at the end of a month, at least a year after joining.
    left = (rng.random(n) < LEFT_TRUST_SHARE) & (join < year_start - 400)
    leave = np.full(n, -1, dtype=np.int64)
    leave[left] = first_of_month(rng.integers(join[left] + 400, year_end + 1)) - 1
    movers = np.flatnonzero(left & (rng.random(n) < REBROKERED_SHARE))
    new_trust = np.empty(len(movers), dtype=np.int64)
    for k, m in enumerate(movers):
        region = las.region[schools.la[member_school[m]]]
        others = np.flatnonzero((las.region[home_la] == region) & (np.arange(n_trusts) != member_trust[m]))
        if len(others) == 0:
            others = np.flatnonzero(np.arange(n_trusts) != member_trust[m])
        new_trust[k] = rng.choice(others)
    member_school = np.concatenate([member_school, member_school[movers]])
    member_trust = np.concatenate([member_trust, new_trust])
    join = np.concatenate([join, leave[movers] + 1])
    leave = np.concatenate([leave, np.full(len(movers), -1, dtype=np.int64)])

    current_trust = np.full(len(schools), -1, dtype=np.int64)
    active = leave < 0
    current_trust[member_school[active]] = member_trust[active]
    order = np.lexsort((join, schools.school_id[member_school]))
    return Trusts(
        trust_id=np.array([f"TR{k + 1:05d}" for k in range(n_trusts)], dtype=object),
        trust_name=_trust_names(rng, n_trusts, las, home_la),
        member_school=member_school[order], member_trust=member_trust[order],
        join_days=join[order], leave_days=leave[order], current_trust=current_trust,
    )


def trust_membership_table(trusts: Trusts, schools: Schools) -> pa.Table:
    """The `trust_membership` input table: one row per school per spell in a trust."""
    return pa.table(
        {
            "school_id": schools.school_id[trusts.member_school],
            "trust_id": trusts.trust_id[trusts.member_trust],
            "trust_name": trusts.trust_name[trusts.member_trust],
            "join_date": pa.array(trusts.join_days.astype(np.int32), type=pa.date32()),
            "leave_date": pa.array(trusts.leave_days.astype(np.int32), type=pa.date32(),
                                   mask=trusts.leave_days < 0),
        },
        schema=TRUST_MEMBERSHIP.arrow_schema(),
    )
