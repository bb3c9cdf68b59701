"""Contextual value added model specifications, loaded from conf/models/*.yaml.

A specification says which random-intercept model to fit (SPEC 2.3): the outcome and its
valid range, how prior attainment is scored (average point score, its square, each
subject's difference from the average), categorical terms with their reference levels,
pupil-level terms, interactions, and school-level terms (the mean and SD of the model's
pupils' prior attainment). It is loaded into frozen dataclasses; an unknown or missing
key, a code that is not in the input contract's code list, or a term defined twice is a
`ConfigError` naming the file.

Two kinds of file:

* a full model (``ks2_mainstream.yaml``, ``ks4_mainstream.yaml``) with ``key_stage``,
  ``outcome`` and ``prior_attainment`` blocks;
* a model that takes its ``outcome`` and ``prior_attainment`` blocks from a key stage's
  full model (``special.yaml``: ``inherit: {ks2: ks2_mainstream.yaml, ...}``) and sets
  only its own terms; it is loaded for one key stage at a time.

Term names and their stage of the Ready Reckoner decomposition (seed 004):

* ``prior_attainment``: ``intercept``, ``prior_aps``, ``prior_aps_sq``,
  ``prior_<subject>_minus_aps``;
* ``characteristics``: each categorical level term (e.g. ``female``, ``sen_plan``,
  ``eth_WIRI``), each pupil term (e.g. ``fsm``, ``idaci``) and each interaction,
  named ``<a>_x_<b>`` (``fsm_x_eth_WIRI``, ``eal_x_prior_aps``);
* ``school_level``: ``school_mean_prior_aps``, ``school_sd_prior_aps``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from valueadded.config import REPO_CONF_DIR, CodeLists, ConfigError, load_code_lists, read_yaml
from valueadded.measures.inclusion import NominalScores

MODELS_DIR = REPO_CONF_DIR / "models"
CODES_FILE = REPO_CONF_DIR / "reference" / "codes.yaml"

STAGES = ("prior_attainment", "characteristics", "school_level")
POPULATIONS = ("mainstream", "special")
WHEN_NOT_ESTIMABLE = ("stop", "report")
SCHOOL_TERMS = ("school_mean_prior_aps", "school_sd_prior_aps")

# Outcome measures and the parameters each takes (besides `measure`, `valid_range`, `school_score_centre`).
OUTCOME_MEASURES = {
    "attainment8": (),  # 2 x english + 2 x maths + ebacc_1..3 + open_1..3 slot points
    "ks2_reading_maths_average": ("nominal_scores",),  # mean of the two test outcomes (SPEC 2.2 scores)
    "column": ("column",),  # a numeric column of the pupil table, as it is
}
# Prior attainment measures, their parameters and their subjects.
PRIOR_MEASURES = {
    "ks2_scaled_scores": ("nominal_scores",),  # KS4: mean of KS2 reading and maths scores
    "ks1_teacher_assessment": ("points",),  # KS2: ((reading + writing)/2 + maths)/2 in KS1 points
    "subject_points": ("columns",),  # mean of numeric subject columns (e.g. fine grades)
}
FIXED_SUBJECTS = {
    "ks2_scaled_scores": ("reading", "maths"),
    "ks1_teacher_assessment": ("reading", "writing", "maths"),
}
# Categorical columns of the pupil table and the code list (conf/reference/codes.yaml) they take.
CATEGORICAL_CODE_LISTS = {"gender": "genders", "sen": "sen", "ethnicity": "ethnicities"}

_NAME = re.compile(r"^[a-z][a-z0-9_]*$", re.IGNORECASE)


@dataclass(frozen=True)
class Term:
    """One column of the design: its name and its stage of the prediction."""

    name: str
    stage: str


@dataclass(frozen=True)
class OutcomeSpec:
    """The outcome: how it is computed, its valid range and the centre of school scores."""

    measure: str
    valid_range: tuple[float, float]
    school_score_centre: float
    column: str | None = None
    nominal_scores: NominalScores | None = None


@dataclass(frozen=True)
class PriorSpec:
    """Prior attainment: the average point score (APS) and which prior terms enter.

    Attributes:
        measure: one of PRIOR_MEASURES.
        square: include ``prior_aps_sq``.
        subject_differences: subjects with a ``prior_<subject>_minus_aps`` term.
        points: ks1_teacher_assessment: teacher assessment code -> KS1 points.
        nominal_scores: ks2_scaled_scores: scores of non-scaled-score outcomes.
        columns: subject_points: subject -> numeric column of the pupil table.
    """

    measure: str
    square: bool
    subject_differences: tuple[str, ...]
    points: Mapping[str, float] | None = None
    nominal_scores: NominalScores | None = None
    columns: Mapping[str, str] | None = None

    @property
    def subjects(self) -> tuple[str, ...]:
        if self.measure == "subject_points":
            return tuple(self.columns)
        return FIXED_SUBJECTS[self.measure]

    @property
    def term_names(self) -> tuple[str, ...]:
        names = ["prior_aps"] + (["prior_aps_sq"] if self.square else [])
        return tuple(names + [f"prior_{subject}_minus_aps" for subject in self.subject_differences])


@dataclass(frozen=True)
class CategoricalSpec:
    """A categorical pupil characteristic coded as indicator terms against a reference.

    `levels` holds (term name, codes) pairs: the term is 1 when the pupil's `column` is one
    of the codes. The reference codes have no term. Reference and levels partition the
    column's code list exactly.
    """

    name: str
    column: str
    reference: tuple[str, ...]
    levels: tuple[tuple[str, tuple[str, ...]], ...]

    @property
    def term_names(self) -> tuple[str, ...]:
        return tuple(term for term, _ in self.levels)


@dataclass(frozen=True)
class ModelSpec:
    """A contextual value added model for one key stage and one school population."""

    name: str
    description: str
    source: str
    key_stage: str
    population: str
    outcome: OutcomeSpec
    prior: PriorSpec
    categorical: tuple[CategoricalSpec, ...]
    pupil_terms: tuple[str, ...]
    interactions: tuple[tuple[str, str], ...]
    school_terms: tuple[str, ...]
    when_not_estimable: str

    def operand_terms(self, operand: str) -> tuple[str, ...]:
        """The term(s) an interaction operand stands for (a categorical expands to its levels)."""
        for categorical in self.categorical:
            if categorical.name == operand:
                return categorical.term_names
        return (operand,)

    @property
    def interaction_terms(self) -> tuple[tuple[str, str, str], ...]:
        """(term name, left term, right term) for every interaction column."""
        out = []
        for left, right in self.interactions:
            for a in self.operand_terms(left):
                for b in self.operand_terms(right):
                    out.append((f"{a}_x_{b}", a, b))
        return tuple(out)

    @property
    def terms(self) -> tuple[Term, ...]:
        """Every design column, ``intercept`` first, in a fixed order."""
        terms = [Term("intercept", "prior_attainment")]
        terms += [Term(name, "prior_attainment") for name in self.prior.term_names]
        terms += [Term(name, "characteristics") for c in self.categorical for name in c.term_names]
        terms += [Term(name, "characteristics") for name in self.pupil_terms]
        terms += [Term(name, "characteristics") for name, _, _ in self.interaction_terms]
        terms += [Term(name, "school_level") for name in self.school_terms]
        return tuple(terms)

    @property
    def term_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.terms)

    @property
    def stage_of(self) -> dict[str, str]:
        return {t.name: t.stage for t in self.terms}


# ------------------------------------------------------------------------------ loading


def _keys(path: Path, block: str, content: Any, required: set[str], optional: set[str] = frozenset()) -> dict:
    where = f"{path}: {block}" if block else str(path)
    if not isinstance(content, dict):
        raise ConfigError(f"{where}: expected a mapping of keys to values")
    unknown = sorted(set(content) - required - set(optional))
    missing = sorted(required - set(content))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; expected {sorted(required | set(optional))}")
    if missing:
        raise ConfigError(f"{where}: missing key(s) {missing}")
    return content


def _number(path: Path, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{path}: {key} must be a number, got {value!r}")
    return float(value)


def _name(path: Path, key: str, value: Any) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ConfigError(f"{path}: {key} must be a name (letters, digits, underscores), got {value!r}")
    return value


def _names(path: Path, key: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(f"{path}: {key} must be a list")
    return tuple(_name(path, f"{key}[{i}]", v) for i, v in enumerate(value))


def _codes(path: Path, key: str, value: Any, known: tuple[str, ...]) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{path}: {key} must be a list of codes")
    unknown = [str(code) for code in value if str(code) not in known]
    if unknown:
        raise ConfigError(f"{path}: {key}: unknown code(s) {unknown}; expected some of {list(known)}")
    return tuple(str(code) for code in value)


def _code_map(path: Path, key: str, value: Any, known: tuple[str, ...]) -> Mapping[str, float]:
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"{path}: {key} must map codes to numbers")
    out = {}
    for code, number in value.items():
        code = str(code)
        if code not in known:
            raise ConfigError(f"{path}: {key}: unknown code {code!r}; expected one of {list(known)}")
        out[code] = _number(path, f"{key}.{code}", number)
    return MappingProxyType(out)


def _nominal_scores(path: Path, block: str, content: Any, codes: CodeLists) -> NominalScores:
    """The model's KS2 nominal scores, for the KS2 measures' rule (inclusion.ks2_test_score):
    `sat_no_scaled_score` for test code N with one of `sat_no_scaled_score_ta` (HNM, EXS),
    `pre_key_stage` (B or N, by assessment) and `below_pre_key_stage` (B or N with BLW, by
    P-scale or NOTSEN)."""
    _keys(path, block, content, {"sat_no_scaled_score", "sat_no_scaled_score_ta", "pre_key_stage", "below_pre_key_stage"})
    return NominalScores(
        pscale=dict(_code_map(path, f"{block}.below_pre_key_stage", content["below_pre_key_stage"], codes.pscales)),
        pre_key_stage=dict(_code_map(path, f"{block}.pre_key_stage", content["pre_key_stage"], codes.ks2_test_ta)),
        sat_without_scaled_score=_number(path, f"{block}.sat_no_scaled_score", content["sat_no_scaled_score"]),
        sat_without_scaled_score_ta=_codes(path, f"{block}.sat_no_scaled_score_ta", content["sat_no_scaled_score_ta"], codes.ks2_test_ta),
    )


def _outcome(path: Path, content: Any, codes: CodeLists) -> OutcomeSpec:
    block = "outcome"
    measure = content.get("measure") if isinstance(content, dict) else None
    if measure not in OUTCOME_MEASURES:
        raise ConfigError(f"{path}: outcome.measure must be one of {list(OUTCOME_MEASURES)}, got {measure!r}")
    _keys(path, block, content, {"measure", "valid_range", "school_score_centre", *OUTCOME_MEASURES[measure]})
    valid_range = content["valid_range"]
    if not isinstance(valid_range, list) or len(valid_range) != 2:
        raise ConfigError(f"{path}: outcome.valid_range must be [low, high]")
    low, high = (_number(path, "outcome.valid_range", v) for v in valid_range)
    if not low < high:
        raise ConfigError(f"{path}: outcome.valid_range must have low < high, got {valid_range}")
    return OutcomeSpec(
        measure=measure,
        valid_range=(low, high),
        school_score_centre=_number(path, "outcome.school_score_centre", content["school_score_centre"]),
        column=_name(path, "outcome.column", content["column"]) if measure == "column" else None,
        nominal_scores=(
            _nominal_scores(path, "outcome.nominal_scores", content["nominal_scores"], codes)
            if "nominal_scores" in OUTCOME_MEASURES[measure] else None
        ),
    )


def _prior(path: Path, content: Any, codes: CodeLists) -> PriorSpec:
    block = "prior_attainment"
    measure = content.get("measure") if isinstance(content, dict) else None
    if measure not in PRIOR_MEASURES:
        raise ConfigError(f"{path}: prior_attainment.measure must be one of {list(PRIOR_MEASURES)}, got {measure!r}")
    _keys(path, block, content, {"measure", "square", "subject_differences", *PRIOR_MEASURES[measure]})
    if not isinstance(content["square"], bool):
        raise ConfigError(f"{path}: prior_attainment.square must be true or false")
    columns = None
    if measure == "subject_points":
        raw = content["columns"]
        if not isinstance(raw, dict) or len(raw) < 1:
            raise ConfigError(f"{path}: prior_attainment.columns must map subjects to columns")
        columns = MappingProxyType({_name(path, "prior_attainment.columns", s): _name(path, f"prior_attainment.columns.{s}", c)
                                    for s, c in raw.items()})
    spec = PriorSpec(
        measure=measure,
        square=content["square"],
        subject_differences=_names(path, "prior_attainment.subject_differences", content["subject_differences"]),
        points=_code_map(path, "prior_attainment.points", content["points"], codes.ks1_ta) if measure == "ks1_teacher_assessment" else None,
        nominal_scores=(_nominal_scores(path, "prior_attainment.nominal_scores", content["nominal_scores"], codes)
                        if measure == "ks2_scaled_scores" else None),
        columns=columns,
    )
    unknown = [s for s in spec.subject_differences if s not in spec.subjects]
    if unknown:
        raise ConfigError(f"{path}: prior_attainment.subject_differences: {unknown} not among the subjects {list(spec.subjects)}")
    if len(set(spec.subject_differences)) != len(spec.subject_differences):
        raise ConfigError(f"{path}: prior_attainment.subject_differences repeats a subject")
    if len(spec.subject_differences) >= len(spec.subjects):
        # The differences of all subjects from their (weighted) mean sum to zero.
        raise ConfigError(
            f"{path}: prior_attainment.subject_differences: at most {len(spec.subjects) - 1} of the "
            f"{len(spec.subjects)} subjects (the differences from the average of all of them are collinear)"
        )
    return spec


def _categorical(path: Path, index: int, content: Any, codes: CodeLists) -> CategoricalSpec:
    block = f"categorical[{index}]"
    _keys(path, block, content, {"name", "column", "reference", "levels"})
    column = content["column"]
    if column not in CATEGORICAL_CODE_LISTS:
        raise ConfigError(f"{path}: {block}.column must be one of {list(CATEGORICAL_CODE_LISTS)}, got {column!r}")
    known = getattr(codes, CATEGORICAL_CODE_LISTS[column])
    reference = tuple(str(c) for c in (content["reference"] or []))
    levels_raw = content["levels"]
    if not reference:
        raise ConfigError(f"{path}: {block}.reference must list at least one code")
    if not isinstance(levels_raw, dict) or not levels_raw:
        raise ConfigError(f"{path}: {block}.levels must map term names to lists of codes")
    levels = []
    for term, level_codes in levels_raw.items():
        if not isinstance(level_codes, list) or not level_codes:
            raise ConfigError(f"{path}: {block}.levels.{term} must be a non-empty list of codes")
        levels.append((_name(path, f"{block}.levels", term), tuple(str(c) for c in level_codes)))
    assigned = list(reference) + [c for _, cs in levels for c in cs]
    unknown = sorted(set(assigned) - set(known))
    twice = sorted({c for c in assigned if assigned.count(c) > 1})
    unassigned = [c for c in known if c not in assigned]
    if unknown:
        raise ConfigError(f"{path}: {block}: unknown {column} code(s) {unknown}; the code list is {list(known)}")
    if twice:
        raise ConfigError(f"{path}: {block}: code(s) {twice} assigned more than once")
    if unassigned:
        raise ConfigError(f"{path}: {block}: code(s) {unassigned} are neither the reference nor in a level")
    return CategoricalSpec(
        name=_name(path, f"{block}.name", content["name"]), column=column, reference=reference, levels=tuple(levels)
    )


_FULL_KEYS = {"name", "description", "population", "key_stage", "outcome", "prior_attainment", "categorical",
              "pupil_terms", "interactions", "school_terms", "when_not_estimable"}
_INHERITING_KEYS = (_FULL_KEYS - {"key_stage", "outcome", "prior_attainment"}) | {"inherit"}


def load_model_spec(path: str | Path, key_stage: str | None = None, codes: CodeLists | None = None) -> ModelSpec:
    """Load and validate a model specification.

    Args:
        path: the YAML file (a bare file name is looked up in conf/models/).
        key_stage: required for a file with ``inherit`` (which key stage's outcome and prior
            attainment to take); for a full model, if given, it must match its ``key_stage``.
        codes: the code lists to check codes against (default conf/reference/codes.yaml).

    Raises:
        ConfigError: naming the file, for any unknown, missing or invalid key or value.
    """
    path = Path(path)
    if not path.is_absolute() and not path.exists():
        path = MODELS_DIR / path
    codes = codes or load_code_lists(CODES_FILE)
    content = read_yaml(path)
    inherits = "inherit" in content
    _keys(path, "", content, _INHERITING_KEYS if inherits else _FULL_KEYS)

    if inherits:
        table = content["inherit"]
        if not isinstance(table, dict) or not table:
            raise ConfigError(f"{path}: inherit must map key stages to model files")
        if key_stage is None:
            raise ConfigError(f"{path}: takes its outcome from a key stage's model: load it for one of {sorted(table)}")
        if key_stage not in table:
            raise ConfigError(f"{path}: inherit has no model for key stage {key_stage!r} (has {sorted(table)})")
        parent_path = (path.parent / str(table[key_stage])).resolve()
        parent_content = read_yaml(parent_path)
        if "inherit" in parent_content:
            raise ConfigError(f"{path}: inherit.{key_stage}: {parent_path} itself inherits; name a full model")
        _keys(parent_path, "", parent_content, _FULL_KEYS)
        if parent_content["key_stage"] != key_stage:
            raise ConfigError(f"{path}: inherit.{key_stage}: {parent_path} is a {parent_content['key_stage']!r} model")
        outcome = _outcome(parent_path, parent_content["outcome"], codes)
        prior = _prior(parent_path, parent_content["prior_attainment"], codes)
    else:
        if content["key_stage"] not in codes.key_stages:
            raise ConfigError(f"{path}: key_stage must be one of {list(codes.key_stages)}, got {content['key_stage']!r}")
        if key_stage is not None and content["key_stage"] != key_stage:
            raise ConfigError(f"{path}: is a {content['key_stage']!r} model, not {key_stage!r}")
        key_stage = content["key_stage"]
        outcome = _outcome(path, content["outcome"], codes)
        prior = _prior(path, content["prior_attainment"], codes)

    if content["population"] not in POPULATIONS:
        raise ConfigError(f"{path}: population must be one of {list(POPULATIONS)}, got {content['population']!r}")
    if content["when_not_estimable"] not in WHEN_NOT_ESTIMABLE:
        raise ConfigError(f"{path}: when_not_estimable must be one of {list(WHEN_NOT_ESTIMABLE)}, got {content['when_not_estimable']!r}")
    raw_categorical = content["categorical"] or []
    if not isinstance(raw_categorical, list):
        raise ConfigError(f"{path}: categorical must be a list")
    categorical = tuple(_categorical(path, i, c, codes) for i, c in enumerate(raw_categorical))
    pupil_terms = _names(path, "pupil_terms", content["pupil_terms"])
    school_terms = _names(path, "school_terms", content["school_terms"])
    bad_school = [t for t in school_terms if t not in SCHOOL_TERMS]
    if bad_school:
        raise ConfigError(f"{path}: school_terms: unknown {bad_school}; available {list(SCHOOL_TERMS)}")

    raw_interactions = content["interactions"] or []
    if not isinstance(raw_interactions, list):
        raise ConfigError(f"{path}: interactions must be a list of [term, term] pairs")
    operands = set(prior.term_names) | set(pupil_terms) | {c.name for c in categorical} | {
        t for c in categorical for t in c.term_names}
    interactions = []
    for i, pair in enumerate(raw_interactions):
        if not isinstance(pair, list) or len(pair) != 2:
            raise ConfigError(f"{path}: interactions[{i}] must be a pair [term, term], got {pair!r}")
        for operand in pair:
            if operand not in operands:
                raise ConfigError(
                    f"{path}: interactions[{i}]: {operand!r} is not a prior attainment term, pupil term or "
                    f"categorical of this model (interactions are of terms in the model)"
                )
        interactions.append((str(pair[0]), str(pair[1])))

    spec = ModelSpec(
        name=_name(path, "name", content["name"]),
        description=str(content["description"] or "").strip(),
        source=str(path.resolve()),
        key_stage=key_stage,
        population=content["population"],
        outcome=outcome,
        prior=prior,
        categorical=categorical,
        pupil_terms=pupil_terms,
        interactions=tuple(interactions),
        school_terms=school_terms,
        when_not_estimable=content["when_not_estimable"],
    )
    names = spec.term_names
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"{path}: term(s) {repeated} defined more than once")
    clash = [c.name for c in categorical if c.name in names]
    if clash:
        raise ConfigError(f"{path}: categorical name(s) {clash} are also term names")
    return spec
