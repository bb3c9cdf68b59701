"""England's regions, local authorities and ethnic mix, as the generator assumes them.

The 9 English regions carry their real ONS codes and names; the ~150 local authorities carry
their DfE three-digit codes, names and an approximate 2021 census population (thousands),
which sets how many schools each gets. Each authority also has a kind (London borough,
metropolitan/city, other unitary, shire county) that sets its share of small rural primaries,
and a diversity level that sets how far its ethnic mix departs from its region's.

Everything here is a documented assumption of the synthetic cohort, not official data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REGIONS: tuple[tuple[str, str], ...] = (
    ("E12000001", "North East"),
    ("E12000002", "North West"),
    ("E12000003", "Yorkshire and The Humber"),
    ("E12000004", "East Midlands"),
    ("E12000005", "West Midlands"),
    ("E12000006", "East of England"),
    ("E12000007", "London"),
    ("E12000008", "South East"),
    ("E12000009", "South West"),
)
LONDON = 6

# (la_code, la_name, region index, population in thousands, kind)
# kind: L London borough, M metropolitan borough or large city, U other unitary, C shire county
LOCAL_AUTHORITIES: tuple[tuple[str, str, int, int, str], ...] = (
    ("390", "Gateshead", 0, 196, "M"), ("391", "Newcastle upon Tyne", 0, 300, "M"),
    ("392", "North Tyneside", 0, 209, "M"), ("393", "South Tyneside", 0, 148, "M"),
    ("394", "Sunderland", 0, 274, "M"), ("805", "Hartlepool", 0, 92, "U"),
    ("806", "Middlesbrough", 0, 143, "U"), ("807", "Redcar and Cleveland", 0, 136, "U"),
    ("808", "Stockton-on-Tees", 0, 197, "U"), ("840", "County Durham", 0, 522, "C"),
    ("841", "Darlington", 0, 107, "U"), ("929", "Northumberland", 0, 320, "C"),
    ("340", "Knowsley", 1, 154, "M"), ("341", "Liverpool", 1, 486, "M"),
    ("342", "St. Helens", 1, 183, "M"), ("343", "Sefton", 1, 279, "M"),
    ("344", "Wirral", 1, 320, "M"), ("350", "Bolton", 1, 296, "M"),
    ("351", "Bury", 1, 193, "M"), ("352", "Manchester", 1, 552, "M"),
    ("353", "Oldham", 1, 242, "M"), ("354", "Rochdale", 1, 223, "M"),
    ("355", "Salford", 1, 270, "M"), ("356", "Stockport", 1, 294, "M"),
    ("357", "Tameside", 1, 231, "M"), ("358", "Trafford", 1, 235, "M"),
    ("359", "Wigan", 1, 330, "M"), ("876", "Halton", 1, 128, "U"),
    ("877", "Warrington", 1, 210, "U"), ("888", "Lancashire", 1, 1235, "C"),
    ("889", "Blackburn with Darwen", 1, 154, "U"), ("890", "Blackpool", 1, 141, "U"),
    ("895", "Cheshire East", 1, 398, "U"), ("896", "Cheshire West and Chester", 1, 357, "U"),
    ("909", "Cumbria", 1, 500, "C"),
    ("370", "Barnsley", 2, 245, "M"), ("371", "Doncaster", 2, 308, "M"),
    ("372", "Rotherham", 2, 265, "M"), ("373", "Sheffield", 2, 556, "M"),
    ("380", "Bradford", 2, 546, "M"), ("381", "Calderdale", 2, 206, "M"),
    ("382", "Kirklees", 2, 433, "M"), ("383", "Leeds", 2, 812, "M"),
    ("384", "Wakefield", 2, 353, "M"), ("810", "Kingston upon Hull, City of", 2, 267, "U"),
    ("811", "East Riding of Yorkshire", 2, 342, "U"), ("812", "North East Lincolnshire", 2, 157, "U"),
    ("813", "North Lincolnshire", 2, 169, "U"), ("815", "North Yorkshire", 2, 615, "C"),
    ("816", "York", 2, 202, "U"),
    ("830", "Derbyshire", 3, 795, "C"), ("831", "Derby", 3, 261, "U"),
    ("855", "Leicestershire", 3, 712, "C"), ("856", "Leicester", 3, 368, "U"),
    ("857", "Rutland", 3, 41, "U"), ("891", "Nottinghamshire", 3, 824, "C"),
    ("892", "Nottingham", 3, 323, "U"), ("925", "Lincolnshire", 3, 768, "C"),
    ("928", "Northamptonshire", 3, 785, "C"),
    ("330", "Birmingham", 4, 1144, "M"), ("331", "Coventry", 4, 345, "M"),
    ("332", "Dudley", 4, 323, "M"), ("333", "Sandwell", 4, 341, "M"),
    ("334", "Solihull", 4, 216, "M"), ("335", "Walsall", 4, 284, "M"),
    ("336", "Wolverhampton", 4, 263, "M"), ("860", "Staffordshire", 4, 876, "C"),
    ("861", "Stoke-on-Trent", 4, 258, "U"), ("884", "Herefordshire", 4, 187, "U"),
    ("885", "Worcestershire", 4, 603, "C"), ("893", "Shropshire", 4, 323, "U"),
    ("894", "Telford and Wrekin", 4, 186, "U"), ("937", "Warwickshire", 4, 596, "C"),
    ("821", "Luton", 5, 225, "U"), ("822", "Bedford", 5, 185, "U"),
    ("823", "Central Bedfordshire", 5, 295, "U"), ("873", "Cambridgeshire", 5, 678, "C"),
    ("874", "Peterborough", 5, 215, "U"), ("881", "Essex", 5, 1503, "C"),
    ("882", "Southend-on-Sea", 5, 181, "U"), ("883", "Thurrock", 5, 176, "U"),
    ("919", "Hertfordshire", 5, 1198, "C"), ("926", "Norfolk", 5, 917, "C"),
    ("935", "Suffolk", 5, 760, "C"),
    ("201", "City of London", 6, 9, "L"), ("202", "Camden", 6, 210, "L"),
    ("203", "Greenwich", 6, 289, "L"), ("204", "Hackney", 6, 259, "L"),
    ("205", "Hammersmith and Fulham", 6, 183, "L"), ("206", "Islington", 6, 217, "L"),
    ("207", "Kensington and Chelsea", 6, 143, "L"), ("208", "Lambeth", 6, 317, "L"),
    ("209", "Lewisham", 6, 300, "L"), ("210", "Southwark", 6, 307, "L"),
    ("211", "Tower Hamlets", 6, 310, "L"), ("212", "Wandsworth", 6, 328, "L"),
    ("213", "Westminster", 6, 204, "L"), ("301", "Barking and Dagenham", 6, 219, "L"),
    ("302", "Barnet", 6, 389, "L"), ("303", "Bexley", 6, 246, "L"),
    ("304", "Brent", 6, 339, "L"), ("305", "Bromley", 6, 330, "L"),
    ("306", "Croydon", 6, 391, "L"), ("307", "Ealing", 6, 367, "L"),
    ("308", "Enfield", 6, 330, "L"), ("309", "Haringey", 6, 264, "L"),
    ("310", "Harrow", 6, 261, "L"), ("311", "Havering", 6, 262, "L"),
    ("312", "Hillingdon", 6, 305, "L"), ("313", "Hounslow", 6, 288, "L"),
    ("314", "Kingston upon Thames", 6, 168, "L"), ("315", "Merton", 6, 215, "L"),
    ("316", "Newham", 6, 351, "L"), ("317", "Redbridge", 6, 310, "L"),
    ("318", "Richmond upon Thames", 6, 195, "L"), ("319", "Sutton", 6, 209, "L"),
    ("320", "Waltham Forest", 6, 278, "L"),
    ("825", "Buckinghamshire", 7, 553, "U"), ("826", "Milton Keynes", 7, 287, "U"),
    ("845", "East Sussex", 7, 546, "C"), ("846", "Brighton and Hove", 7, 277, "U"),
    ("850", "Hampshire", 7, 1400, "C"), ("851", "Portsmouth", 7, 208, "U"),
    ("852", "Southampton", 7, 249, "U"), ("867", "Bracknell Forest", 7, 125, "U"),
    ("868", "Windsor and Maidenhead", 7, 153, "U"), ("869", "West Berkshire", 7, 161, "U"),
    ("870", "Reading", 7, 174, "U"), ("871", "Slough", 7, 158, "U"),
    ("872", "Wokingham", 7, 177, "U"), ("886", "Kent", 7, 1576, "C"),
    ("887", "Medway", 7, 279, "U"), ("921", "Isle of Wight", 7, 140, "U"),
    ("931", "Oxfordshire", 7, 725, "C"), ("936", "Surrey", 7, 1203, "C"),
    ("938", "West Sussex", 7, 882, "C"),
    ("800", "Bath and North East Somerset", 8, 193, "U"), ("801", "Bristol, City of", 8, 472, "U"),
    ("802", "North Somerset", 8, 216, "U"), ("803", "South Gloucestershire", 8, 290, "U"),
    ("838", "Dorset", 8, 379, "U"), ("839", "Bournemouth, Christchurch and Poole", 8, 400, "U"),
    ("865", "Wiltshire", 8, 510, "U"), ("866", "Swindon", 8, 233, "U"),
    ("878", "Devon", 8, 811, "C"), ("879", "Plymouth", 8, 264, "U"),
    ("880", "Torbay", 8, 139, "U"), ("908", "Cornwall", 8, 570, "U"),
    ("916", "Gloucestershire", 8, 645, "C"), ("933", "Somerset", 8, 571, "C"),
    ("420", "Isles of Scilly", 8, 2, "U"),
)

# Authorities whose ethnic mix is much more (or less) diverse than their region's; the rest
# are "medium", except shire counties, which default to "low".
HIGH_DIVERSITY = frozenset(
    "202 203 204 207 208 209 210 211 213 301 304 307 309 310 313 316 317 320 "
    "330 380 856 821 871 352 889 333 336 331 353 892 831 874 870 382 383 335 354 350 826 801 "
    "373 391 852 822".split()
)
LOW_DIVERSITY = frozenset("303 305 311 318 319".split())
# Multiplies the odds of a pupil being from a minority group, relative to the region.
DIVERSITY_ODDS_MULTIPLIER = {"high": 4.0, "medium": 1.3, "low": 0.6}
LA_DIVERSITY_LOG_ODDS_SD = 0.35

# Authorities known to be much more (or less) deprived than their kind; shifts the school
# deprivation index, in standard deviations.
MORE_DEPRIVED = frozenset(
    "340 341 352 806 890 810 330 333 211 204 316 380 892 354 353 889 394 861 336 209 210".split()
)
LESS_DEPRIVED = frozenset("872 318 936 868 825 857 314 931 919 895 816 812".split())
DEPRIVATION_BY_KIND = {"L": 0.3, "M": 0.3, "U": 0.0, "C": -0.3}
DEPRIVATION_LISTED_SHIFT = 0.6
DEPRIVATION_LA_SD = 0.3

ETHNIC_GROUPS: tuple[str, ...] = (
    "WBRI", "WIRI", "WIRT", "WOTH", "WROM", "MWBC", "MWBA", "MWAS", "MOTH", "AIND",
    "APKN", "ABAN", "AOTH", "BCRB", "BAFR", "BOTH", "CHNE", "OOTH", "UNCL",
)
ETHNIC_REFERENCE = "WBRI"

# Percent of pupils in each minority group (every group after WBRI, in ETHNIC_GROUPS order),
# per region; WBRI is the remainder. Weighted by pupils, England comes to WBRI ~65%.
REGION_MINORITY_PERCENT: tuple[tuple[float, ...], ...] = (
    # WIRI WIRT WOTH WROM MWBC MWBA MWAS MOTH AIND APKN ABAN AOTH BCRB BAFR BOTH CHNE OOTH UNCL
    (0.1, 0.1, 3.0, 0.3, 0.8, 0.4, 0.9, 0.9, 0.8, 1.2, 1.0, 1.0, 0.1, 1.5, 0.2, 0.4, 1.0, 0.6),
    (0.3, 0.1, 4.0, 0.4, 1.5, 0.7, 1.6, 1.6, 1.8, 7.0, 1.3, 1.5, 0.3, 2.8, 0.4, 0.5, 1.6, 0.8),
    (0.1, 0.2, 4.0, 0.8, 1.4, 0.5, 1.7, 1.4, 1.2, 8.5, 0.6, 1.2, 0.3, 1.8, 0.4, 0.3, 1.7, 0.8),
    (0.2, 0.1, 6.5, 0.6, 2.0, 0.5, 1.3, 1.5, 6.0, 1.8, 0.5, 1.5, 0.8, 2.5, 0.5, 0.3, 1.3, 0.8),
    (0.3, 0.2, 4.5, 0.6, 3.0, 0.4, 1.4, 1.6, 4.5, 10.5, 2.2, 1.8, 1.5, 2.8, 0.8, 0.3, 1.8, 0.8),
    (0.3, 0.3, 7.0, 0.5, 1.6, 0.7, 1.7, 2.0, 1.6, 2.8, 1.3, 2.0, 0.6, 3.5, 0.6, 0.4, 1.5, 0.9),
    (0.6, 0.1, 10.0, 0.6, 3.2, 1.6, 2.8, 5.0, 6.5, 4.5, 6.5, 5.5, 3.5, 10.0, 2.5, 1.0, 5.0, 1.5),
    (0.3, 0.3, 6.0, 0.5, 1.6, 0.8, 2.0, 2.0, 2.2, 2.8, 0.8, 2.2, 0.4, 2.2, 0.4, 0.5, 1.5, 0.9),
    (0.2, 0.2, 4.0, 0.3, 1.6, 0.6, 1.2, 1.3, 0.7, 0.7, 0.5, 1.0, 0.3, 1.6, 0.3, 0.3, 1.0, 0.8),
)
# Concentration of the Dirichlet draws around the region's (LA) and the LA's (school) mix:
# lower means more segregation between authorities and between schools.
LA_ETHNIC_CONCENTRATION = 60.0
SCHOOL_ETHNIC_CONCENTRATION = 25.0


@dataclass(frozen=True)
class LocalAuthorities:
    """The authorities in use for one generated cohort: one entry per authority (arrays)."""

    code: np.ndarray  # str
    name: np.ndarray  # str
    region: np.ndarray  # int index into REGIONS
    population: np.ndarray  # float, thousands
    kind: np.ndarray  # str L/M/U/C
    deprivation: np.ndarray  # float, SD units
    ethnic_mix: np.ndarray  # float (n_la, 19), rows sum to 1

    def __len__(self) -> int:
        return len(self.code)


def select_local_authorities(scale: float) -> np.ndarray:
    """Indices into LOCAL_AUTHORITIES used at this scale.

    At scale >= 1 every authority is used. Smaller test cohorts keep, per region, the largest
    authorities (about sqrt(scale) of them, at least one), so that each keeps several schools.
    """
    if scale >= 1.0:
        return np.arange(len(LOCAL_AUTHORITIES))
    keep: list[int] = []
    for region in range(len(REGIONS)):
        members = [i for i, la in enumerate(LOCAL_AUTHORITIES) if la[2] == region]
        members.sort(key=lambda i: (-LOCAL_AUTHORITIES[i][3], LOCAL_AUTHORITIES[i][0]))
        n_keep = max(1, round(len(members) * np.sqrt(scale)))
        keep.extend(members[:n_keep])
    return np.array(sorted(keep))


def _region_ethnic_mix() -> np.ndarray:
    """Share of each ethnic group per region, shape (9, 19), rows sum to 1."""
    minority = np.array(REGION_MINORITY_PERCENT) / 100.0
    return np.column_stack([1.0 - minority.sum(axis=1), minority])


def _diversity_level(code: str, kind: str) -> str:
    if code in HIGH_DIVERSITY:
        return "high"
    if code in LOW_DIVERSITY or kind == "C":
        return "low"
    return "medium"


def _shares_keeping_mean(target: float, odds_multiplier: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Shares p_i with odds proportional to `odds_multiplier` whose weighted mean is `target`."""
    low, high = -20.0, 20.0
    for _ in range(60):  # bisection on the log of the common odds factor
        mid = (low + high) / 2
        odds = np.exp(mid) * odds_multiplier
        if np.average(odds / (1 + odds), weights=weights) < target:
            low = mid
        else:
            high = mid
    odds = np.exp((low + high) / 2) * odds_multiplier
    return odds / (1 + odds)


def build_local_authorities(scale: float, rng: np.random.Generator) -> LocalAuthorities:
    """The authorities for one cohort, with their deprivation level and ethnic mix.

    An authority's odds of a minority-group pupil are its region's times its diversity multiplier,
    times a per-region constant chosen so the region's population-weighted share is kept; the mix
    within the minority share is the region's, perturbed by a Dirichlet draw.
    """
    rows = [LOCAL_AUTHORITIES[i] for i in select_local_authorities(scale)]
    code = np.array([r[0] for r in rows])
    kind = np.array([r[4] for r in rows])
    region = np.array([r[2] for r in rows])
    population = np.array([r[3] for r in rows], dtype=float)

    listed = np.array([DEPRIVATION_LISTED_SHIFT if c in MORE_DEPRIVED else
                       -DEPRIVATION_LISTED_SHIFT if c in LESS_DEPRIVED else 0.0 for c in code])
    deprivation = (np.array([DEPRIVATION_BY_KIND[k] for k in kind]) + listed
                   + rng.normal(0.0, DEPRIVATION_LA_SD, len(rows)))

    region_mix = _region_ethnic_mix()
    multiplier = np.array([DIVERSITY_ODDS_MULTIPLIER[_diversity_level(c, k)] for c, k in zip(code, kind)])
    multiplier *= np.exp(rng.normal(0.0, LA_DIVERSITY_LOG_ODDS_SD, len(rows)))
    ethnic_mix = np.empty((len(rows), len(ETHNIC_GROUPS)))
    for r in range(len(REGIONS)):
        members = region == r
        if not members.any():
            continue
        minority_share = _shares_keeping_mean(
            1.0 - region_mix[r, 0], multiplier[members], population[members]
        )
        minority_mix = region_mix[r, 1:] / region_mix[r, 1:].sum()
        alpha = np.tile(minority_mix * LA_ETHNIC_CONCENTRATION, (members.sum(), 1))
        draws = rng.gamma(alpha)
        draws /= draws.sum(axis=1, keepdims=True)
        ethnic_mix[members, 0] = 1.0 - minority_share
        ethnic_mix[members, 1:] = draws * minority_share[:, None]

    return LocalAuthorities(
        code=code,
        name=np.array([r[1] for r in rows]),
        region=region,
        population=population,
        kind=kind,
        deprivation=deprivation,
        ethnic_mix=ethnic_mix,
    )


def allocate(total: int, weights: np.ndarray, minimum: int = 0) -> np.ndarray:
    """Split `total` into integer counts proportional to `weights` (largest remainder).

    Deterministic; every entry gets at least `minimum` when the total allows it.
    """
    n = len(weights)
    base = np.full(n, minimum if total >= minimum * n else 0, dtype=np.int64)
    remaining = total - base.sum()
    quota = weights / weights.sum() * remaining
    counts = np.floor(quota).astype(np.int64)
    short = remaining - counts.sum()
    order = np.argsort(-(quota - counts), kind="stable")
    counts[order[:short]] += 1
    return base + counts
