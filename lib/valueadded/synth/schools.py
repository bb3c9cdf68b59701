"""The generated schools: how many of each kind, where, how big, how deprived, what mix.

One row per school. Primary-phase schools hold a KS2 cohort (Year 6), secondary-phase schools a
KS4 cohort (Year 11). Counts at scale 1 follow England: ~16,500 state-funded mainstream
primaries, ~3,400 secondaries, ~1,000 special schools split between the phases, ~2,000
independent schools. Cohort (year-group) sizes are skewed: many small rural primaries, typical
one- and two-form entry, a few very large schools.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from valueadded.io.schemas import SCHOOLS
from valueadded.synth.geography import (
    REGIONS,
    SCHOOL_ETHNIC_CONCENTRATION,
    LocalAuthorities,
    allocate,
)

# (phase, provision, sector) -> schools at scale 1, and the least kept at any scale.
SCHOOL_COUNTS = {
    ("primary", "mainstream", "state_funded"): (16_500, 40),
    ("secondary", "mainstream", "state_funded"): (3_400, 12),
    ("primary", "special", "state_funded"): (450, 3),
    ("secondary", "special", "state_funded"): (550, 3),
    ("primary", "mainstream", "independent"): (1_000, 3),
    ("secondary", "mainstream", "independent"): (1_000, 3),
}

# Mainstream primary year-group size bands: (mean, sd, low, high); the small band is uniform.
PRIMARY_SIZE_BANDS = ((10.0, 0.0, 5, 15), (27.0, 4.5, 16, 35), (55.0, 6.0, 36, 70), (85.0, 10.0, 71, 125))
# Share of primaries in each band by authority kind (London, Metropolitan, Unitary, County).
PRIMARY_BAND_SHARES = {
    "L": (0.02, 0.30, 0.48, 0.20),
    "M": (0.05, 0.35, 0.45, 0.15),
    "U": (0.16, 0.40, 0.33, 0.11),
    "C": (0.36, 0.36, 0.22, 0.06),
}
# Shire counties have many small village schools: more primaries per head of population.
PRIMARY_SCHOOLS_PER_HEAD = {"L": 1.0, "M": 1.0, "U": 1.15, "C": 1.35}
SECONDARY_SIZE_BANDS = ((85.0, 20.0, 30, 120), (160.0, 30.0, 110, 230), (245.0, 35.0, 200, 360))
SECONDARY_BAND_SHARES = (0.18, 0.60, 0.22)
# Other kinds of school: (mean, sd, low, high) of the year-group size.
OTHER_SIZES = {
    ("primary", "special"): (10.0, 4.0, 3, 25),
    ("secondary", "special"): (13.0, 5.0, 3, 30),
    ("primary", "independent"): (18.0, 7.0, 5, 45),
    ("secondary", "independent"): (40.0, 20.0, 10, 150),
}
# Independent schools cluster in London and the South East.
INDEPENDENT_WEIGHT_BY_REGION = {6: 1.8, 7: 1.6}

# School deprivation index (SD units) = authority level + within-authority spread.
SCHOOL_DEPRIVATION_SD = 0.8
INDEPENDENT_DEPRIVATION = -1.2
# Intake attainment (SD units of pupil prior attainment) falls with deprivation.
INTAKE_PER_DEPRIVATION = -0.22
INTAKE_SD = 0.15
INDEPENDENT_INTAKE = 0.55

URN_LOW, URN_HIGH = 100_000, 999_999

NAME_STEMS = (
    "Oakfield", "Hillside", "St Mary's", "St John's", "Holy Trinity", "Meadowbank", "Riverside",
    "Westfield", "Northgate", "Southfields", "Ashwood", "Beechwood", "Elmhurst", "Fairfield",
    "Greenacres", "Highfield", "Kingsway", "Lakeside", "Millbrook", "Newlands", "Orchard",
    "Parkside", "Queensbridge", "Rosehill", "Springfield", "Thornton", "Upton", "Victoria",
    "Willowbrook", "Yew Tree", "Abbey", "Brookside", "Castle", "Dene", "Eastwood", "Forest",
    "Grange", "Harbour", "Ivy Lane", "Jubilee", "Kestrel", "Larkrise", "Manor", "Nightingale",
    "Oaklands", "Priory", "Redwood", "Sandhurst", "St Peter's", "St Anne's", "Our Lady's",
    "Sacred Heart", "St Joseph's", "Trinity", "Wellington", "Windmill", "Woodlands", "Bishop's",
)
NAME_SUFFIXES = {
    ("primary", "mainstream", "state_funded"): (
        "Primary School", "Primary Academy", "C of E Primary School", "Catholic Primary School",
        "Community Primary School", "Junior School", "Infant and Junior School"),
    ("secondary", "mainstream", "state_funded"): (
        "Academy", "High School", "School", "College", "Catholic High School", "Church of England Academy"),
    ("primary", "special", "state_funded"): ("School", "Special School", "Academy"),
    ("secondary", "special", "state_funded"): ("School", "Special School", "Academy", "College"),
    ("primary", "mainstream", "independent"): ("Preparatory School", "Pre-Prep School", "School"),
    ("secondary", "mainstream", "independent"): ("School", "College", "Independent School"),
}


@dataclass(frozen=True)
class Schools:
    """All generated schools, one entry per school, sorted by school_id (arrays)."""

    school_id: np.ndarray  # str, 6-digit URN
    name: np.ndarray
    phase: np.ndarray  # primary / secondary
    provision: np.ndarray  # mainstream / special
    sector: np.ndarray  # state_funded / independent
    la: np.ndarray  # int index into the LocalAuthorities
    cohort_size: np.ndarray  # int, pupils in the year group
    deprivation: np.ndarray  # float, SD units
    intake: np.ndarray  # float, intake attainment shift in pupil SD units
    ethnic_mix: np.ndarray  # float (n, 19), rows sum to 1

    def __len__(self) -> int:
        return len(self.school_id)

    @property
    def is_special(self) -> np.ndarray:
        return self.provision == "special"

    @property
    def is_independent(self) -> np.ndarray:
        return self.sector == "independent"

    @property
    def key_stage(self) -> np.ndarray:
        return np.where(self.phase == "primary", "ks2", "ks4")


def _banded_sizes(rng: np.random.Generator, band: np.ndarray, bands: tuple) -> np.ndarray:
    sizes = np.empty(len(band), dtype=np.int64)
    for b, (mean, sd, low, high) in enumerate(bands):
        members = band == b
        n = int(members.sum())
        if sd == 0.0:
            sizes[members] = rng.integers(low, high + 1, n)
        else:
            sizes[members] = np.clip(np.rint(rng.normal(mean, sd, n)), low, high)
    return sizes


def _cohort_sizes(rng, phase, provision, sector, la_kind) -> np.ndarray:
    sizes = np.empty(len(phase), dtype=np.int64)
    mainstream_state = (provision == "mainstream") & (sector == "state_funded")
    primary = mainstream_state & (phase == "primary")
    u = rng.random(len(phase))
    shares = np.array([PRIMARY_BAND_SHARES[k] for k in la_kind])
    band = (u[:, None] > np.cumsum(shares, axis=1)).sum(axis=1)
    sizes[primary] = _banded_sizes(rng, band[primary], PRIMARY_SIZE_BANDS)
    secondary = mainstream_state & (phase == "secondary")
    band = (u[:, None] > np.cumsum(SECONDARY_BAND_SHARES)).sum(axis=1)
    sizes[secondary] = _banded_sizes(rng, band[secondary], SECONDARY_SIZE_BANDS)
    for (ph, kind), (mean, sd, low, high) in OTHER_SIZES.items():
        members = (phase == ph) & ((provision == kind) | (sector == kind))
        sizes[members] = np.clip(np.rint(rng.normal(mean, sd, members.sum())), low, high)
    return sizes


def build_schools(las: LocalAuthorities, scale: float, rng: np.random.Generator) -> Schools:
    """Generate every school: its kind, authority, cohort size, deprivation, intake and ethnic mix."""
    columns: dict[str, list[np.ndarray]] = {k: [] for k in ("phase", "provision", "sector", "la")}
    for (phase, provision, sector), (count, least) in SCHOOL_COUNTS.items():
        n = max(least, round(count * scale))
        weights = las.population.copy()
        if phase == "primary" and provision == "mainstream":
            weights *= np.array([PRIMARY_SCHOOLS_PER_HEAD[k] for k in las.kind])
        if sector == "independent":
            weights *= np.array([INDEPENDENT_WEIGHT_BY_REGION.get(r, 1.0) for r in las.region])
        minimum = 1 if (phase, provision, sector) == ("primary", "mainstream", "state_funded") else 0
        per_la = allocate(n, weights, minimum)
        columns["la"].append(np.repeat(np.arange(len(las)), per_la))
        for key, value in (("phase", phase), ("provision", provision), ("sector", sector)):
            columns[key].append(np.full(n, value, dtype=object))
    phase, provision, sector, la = (np.concatenate(columns[k]) for k in ("phase", "provision", "sector", "la"))
    n = len(phase)

    school_id = (rng.choice(URN_HIGH - URN_LOW + 1, size=n, replace=False) + URN_LOW).astype(str)
    independent = sector == "independent"
    deprivation = np.where(
        independent,
        INDEPENDENT_DEPRIVATION + rng.normal(0.0, SCHOOL_DEPRIVATION_SD / 2, n),
        las.deprivation[la] + rng.normal(0.0, SCHOOL_DEPRIVATION_SD, n),
    )
    intake = (INTAKE_PER_DEPRIVATION * deprivation + rng.normal(0.0, INTAKE_SD, n)
              + np.where(independent, INDEPENDENT_INTAKE, 0.0))
    ethnic_mix = rng.gamma(las.ethnic_mix[la] * SCHOOL_ETHNIC_CONCENTRATION + 1e-3)
    ethnic_mix /= ethnic_mix.sum(axis=1, keepdims=True)
    cohort_size = _cohort_sizes(rng, phase, provision, sector, las.kind[la])

    suffix_index = rng.integers(0, 1_000_000, n)
    stems = np.array(NAME_STEMS, dtype=object)[rng.integers(0, len(NAME_STEMS), n)]
    name = np.array([
        f"{stem} {NAME_SUFFIXES[(ph, pr, se)][k % len(NAME_SUFFIXES[(ph, pr, se)])]}"
        for stem, ph, pr, se, k in zip(stems, phase, provision, sector, suffix_index)
    ], dtype=object)

    order = np.argsort(school_id, kind="stable")
    return Schools(
        school_id=school_id[order], name=name[order], phase=phase[order].astype(str),
        provision=provision[order].astype(str), sector=sector[order].astype(str), la=la[order],
        cohort_size=cohort_size[order], deprivation=deprivation[order], intake=intake[order],
        ethnic_mix=ethnic_mix[order],
    )


def schools_table(schools: Schools, las: LocalAuthorities) -> pa.Table:
    """The `schools` input table: one row per school, in the contract's schema."""
    region = las.region[schools.la]
    return pa.table(
        {
            "school_id": schools.school_id,
            "school_name": schools.name,
            "phase": schools.phase,
            "provision": schools.provision,
            "sector": schools.sector,
            "la_code": las.code[schools.la],
            "la_name": las.name[schools.la],
            "region_code": np.array([REGIONS[r][0] for r in range(len(REGIONS))])[region],
            "region_name": np.array([REGIONS[r][1] for r in range(len(REGIONS))])[region],
        },
        schema=SCHOOLS.arrow_schema(),
    )
