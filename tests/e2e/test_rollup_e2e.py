"""Roll-ups on the shared release of the generated cohort (tests/conftest.py), end to end.

The property at the heart of it: every figure of every level and subgroup equals the
(weighted) mean of pupil values recomputed here, in pandas, from pupil_results,
pupil_progress and the input files (the trust rule redone from trust_membership), not
from anything the roll-up stage wrote. Then: no published table shows a figure resting
on fewer than 6 pupils; the drill-down table is exactly those pupil values; and the
comparisons, trust eligibility and identification agree with their definitions.
"""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest
from deltalake import DeltaTable

from valueadded.config import load_release_config
from valueadded.cva.stage import load_release_models
from valueadded.io.schemas import OUTPUT_TABLES
from valueadded.measures.ks2 import load_tables
from valueadded.rollup.measures import MEASURES, PROGRESS, progress_measure_name

from support.pseudonyms import pseudonym_of

YEAR = 2024
ROLLUP = load_release_config().rollup
MIN = ROLLUP.min_pupils
KEY = ["level", "unit_id", "subgroup", "subgroup_value", "measure"]
PARTITIONS = [(ks, stage) for ks in ("ks2", "ks4") for stage in ("unvalidated", "validated")]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tables(generated_release):
    """Every output table of the shared release as pandas, read once (no Spark)."""
    assert generated_release.year == YEAR
    found = {
        schema.name: DeltaTable(str(generated_release.output_dir / schema.audience / schema.name)).to_pandas()
        for schema in OUTPUT_TABLES.values()
    }
    found["_input"] = generated_release.input_dir
    return found


def _part(frame: pd.DataFrame, key_stage: str, stage: str) -> pd.DataFrame:
    return frame[(frame.key_stage == key_stage) & (frame.data_stage == stage)].reset_index(drop=True)


def _input(tables, name: str) -> pd.DataFrame:
    return ds.dataset(str(tables["_input"] / name), format="parquet").to_table().to_pandas()


# ----------------------------------------------------------------------------- the reference


def _school_trusts(tables) -> pd.DataFrame:
    """The trust rule redone in pandas: school_id, trust_id, counted, weight."""
    spells = _input(tables, "trust_membership")
    schools = _input(tables, "schools").set_index("school_id")
    year_end = dt.date(YEAR, 8, 31)
    current = spells[(spells.join_date <= year_end) & (spells.leave_date.isna() | (spells.leave_date > year_end))].copy()
    first_whole = current.join_date.map(lambda d: d.year + (1 if d > dt.date(d.year, 9, 1) else 0))
    current["full_years"] = YEAR - first_whole
    kind = schools.loc[current.school_id]
    current["counted"] = ((kind.provision.to_numpy() == "mainstream") & (kind.sector.to_numpy() == "state_funded")
                          & (current.full_years >= ROLLUP.trusts.min_full_years).to_numpy())
    current["weight"] = current.full_years.map(ROLLUP.trusts.weight).where(current.counted)
    return current[["school_id", "trust_id", "counted", "weight"]]


def _subgroups(results: pd.DataFrame, key_stage: str) -> pd.DataFrame:
    yes_no = lambda column: np.where(results[column], "yes", "no")  # noqa: E731
    ethnic = {code: group for group, codes in ROLLUP.subgroups.ethnic_groups.items() for code in codes}
    middle, high = ROLLUP.subgroups.prior_attainment_bands[key_stage]
    prior = results.prior_attainment
    band = np.select([prior.isna(), prior >= high, prior >= middle], ["none", "high", "middle"], "low")
    return pd.DataFrame({
        "pupil_id": results.pupil_id,
        "disadvantaged": yes_no("disadvantaged"), "fsm": yes_no("fsm"),
        "sen": results.sen.map({"N": "none", "K": "support", "E": "plan"}), "eal": yes_no("eal"),
        "gender": results.gender.map({"F": "female", "M": "male"}), "ethnic_group": results.ethnicity.map(ethnic),
        "prior_attainment_band": band,
        "high_needs": np.where(results.disadvantaged | results.eal | results.sen.isin(["K", "E"]), "yes", "no"),
    })


def _ks2_attainment(tables, results: pd.DataFrame) -> pd.DataFrame:
    """KS2 attainment pupil values from the raw input results (unvalidated: no corrections)."""
    raw = _input(tables, "ks2_results")
    raw["pupil_id"] = raw.pupil_id.map(pseudonym_of)  # the outputs hold pseudonyms
    raw = raw.merge(results[["pupil_id", "included"]], on="pupil_id", validate="one_to_one")
    raw = raw[raw.included]
    ks2 = load_tables(YEAR)
    rows = []
    for level, standard, writing in (("expected", ks2.expected_standard, ks2.writing_expected_ta), ("higher", ks2.higher_standard, ks2.writing_higher_ta)):
        reached = {s: raw[f"{s}_scaled_score"].fillna(0) >= standard for s in ("reading", "maths")}
        reached["writing"] = raw.writing_ta.isin(writing)
        reached["rwm"] = reached["reading"] & reached["writing"] & reached["maths"]
        for subject, hit in reached.items():
            rows.append(pd.DataFrame({"pupil_id": raw.pupil_id, "measure": f"pct_{level}_{subject}", "value": np.where(hit, 100.0, 0.0)}))
    for subject in ("reading", "maths"):
        scored = raw[raw[f"{subject}_scaled_score"].notna()]
        rows.append(pd.DataFrame({"pupil_id": scored.pupil_id, "measure": f"average_scaled_score_{subject}", "value": scored[f"{subject}_scaled_score"].astype(float)}))
    return pd.concat(rows)


def reference_values(tables, key_stage: str, stage: str) -> pd.DataFrame:
    """One row per pupil per measure: pupil_id, school_id, measure, value and the pupil's context."""
    results = _part(tables["pupil_results"], key_stage, stage)
    progress = _part(tables["pupil_progress"], key_stage, stage)
    scored = progress[progress.adjusted_progress.notna()]
    parts = [pd.DataFrame({"pupil_id": scored.pupil_id, "measure": scored.subject.map(progress_measure_name), "value": scored.adjusted_progress})]
    if key_stage == "ks2":
        assert stage == "unvalidated", "the raw results are the pupils' results only before the checking exercise"
        parts.append(_ks2_attainment(tables, results))
    else:
        a8 = progress[progress.subject == "progress_8"].merge(results[["pupil_id", "included"]], on="pupil_id")
        a8 = a8[a8.included]
        parts.append(pd.DataFrame({"pupil_id": a8.pupil_id, "measure": "attainment_8", "value": a8.outcome}))
    centres = {spec.name: spec.outcome.school_score_centre for spec in load_release_models(key_stage)}
    in_model = results[results.cva_model.notna()]
    parts.append(pd.DataFrame({"pupil_id": in_model.pupil_id, "measure": "cva", "value": in_model.cva_model.map(centres) + in_model.cva_residual}))
    values = pd.concat(parts, ignore_index=True)
    context = results[["pupil_id", "school_id", "trust_id", "la_code", "region_code"]].merge(_subgroups(results, key_stage), on="pupil_id")
    values = values.merge(context, on="pupil_id", how="left", validate="many_to_one")
    trusts = _school_trusts(tables)
    return values.merge(trusts[["school_id", "weight"]], on="school_id", how="left")


def reference_figures(values: pd.DataFrame, key_stage: str) -> pd.DataFrame:
    """Every level, all pupils and every subgroup value: n, schools and the (weighted) mean."""
    columns = ["measure", "value", "school_id", "trust_id", "la_code", "region_code", "weight"]
    broken_down = values[values.measure.isin(ROLLUP.subgroups.measures[key_stage])]
    long = pd.concat(
        [values[columns].assign(subgroup="all", subgroup_value="all")]
        + [broken_down[columns].assign(subgroup=d, subgroup_value=broken_down[d]) for d in ROLLUP.subgroups.dimensions],
        ignore_index=True,
    )
    counted = long[long.weight.notna()]
    schools_counted = counted[counted.subgroup == "all"].groupby(["trust_id", "measure"]).school_id.nunique()
    eligible = set(schools_counted[schools_counted >= ROLLUP.trusts.min_schools].index)
    counted = counted[[key in eligible for key in zip(counted.trust_id, counted.measure)]]
    levels = [
        ("school", long, long.school_id, 1.0),
        ("trust", counted, counted.trust_id, counted.weight),
        ("la", long, long.la_code, 1.0),
        ("region", long, long.region_code, 1.0),
        ("national", long, "national", 1.0),
    ]
    figures = []
    for level, frame, unit, weight in levels:
        frame = frame.assign(level=level, unit_id=unit, w=weight)
        frame = frame.assign(wv=frame.w * frame.value)
        grouped = frame.groupby(KEY).agg(n=("value", "size"), schools=("school_id", "nunique"), wv=("wv", "sum"), w=("w", "sum"))
        figures.append(grouped.assign(score=grouped.wv / grouped.w)[["n", "schools", "score"]].reset_index())
    return pd.concat(figures, ignore_index=True)


@pytest.fixture(scope="module", params=["ks2", "ks4"])
def unvalidated(request, tables):
    """The reference values and figures of one key stage's unvalidated partition."""
    values = reference_values(tables, request.param, "unvalidated")
    return request.param, values, reference_figures(values, request.param)


# ----------------------------------------------------------------------------- the property


def test_every_figure_is_the_weighted_mean_of_its_pupils(tables, unvalidated):
    key_stage, _, expected = unvalidated
    written = _part(tables["unsuppressed_measures"], key_stage, "unvalidated")
    joined = written.merge(expected, on=KEY, how="outer", suffixes=("", "_expected"), indicator=True)
    assert (joined._merge == "both").all(), joined[joined._merge != "both"][KEY + ["_merge"]].head(20)
    assert (joined.n == joined.n_expected).all()
    assert (joined.schools == joined.schools_expected).all()
    # A school's all-pupil CVA is shrunk towards the centre (school_scores); every other figure is the mean.
    plain = ~((joined.level == "school") & (joined.subgroup == "all") & (joined.measure == "cva"))
    np.testing.assert_allclose(joined.score[plain], joined.score_expected[plain], rtol=0, atol=1e-9)
    assert set(joined.level) == {"school", "trust", "la", "region", "national"}
    assert set(joined.measure) == {m.name for m in MEASURES[key_stage]}


def test_drill_down_table_holds_exactly_the_pupil_values(tables, unvalidated):
    key_stage, values, _ = unvalidated
    wide = _part(tables["pupil_measures"], key_stage, "unvalidated")
    assert wide.pupil_id.is_unique
    measures = [m.name for m in MEASURES[key_stage]]
    others = [c for c in wide.columns if c in {m.name for ms in MEASURES.values() for m in ms} and c not in measures]
    assert wide[others].isna().all().all()  # the other key stage's measures are empty
    context = [c for c in wide.columns if c not in measures and c not in others]
    drill = wide.melt(id_vars=context, value_vars=measures, var_name="measure", value_name="value").dropna(subset=["value"])
    joined = drill.merge(values, on=["pupil_id", "measure"], how="outer", suffixes=("", "_expected"), indicator=True)
    assert (joined._merge == "both").all()
    np.testing.assert_allclose(joined.value, joined.value_expected, rtol=0, atol=1e-12)
    for column in ("school_id", "la_code", "region_code", *ROLLUP.subgroups.dimensions):
        assert (joined[column] == joined[f"{column}_expected"]).all(), column
    assert ((joined.trust_weight == joined.weight) | (joined.trust_weight.isna() & joined.weight.isna())).all()
    pupils = _part(tables["pupil_results"], key_stage, "unvalidated")
    assert set(wide.pupil_id) == set(pupils.pupil_id)  # one row per pupil of pupil_results


def test_published_figures_are_the_shown_unsuppressed_ones(tables, unvalidated):
    key_stage, _, _ = unvalidated
    restricted = _part(tables["unsuppressed_measures"], key_stage, "unvalidated")
    sub = _part(tables["subgroup_measures"], key_stage, "unvalidated").merge(restricted, on=KEY, suffixes=("", "_r"))
    assert len(sub) == (restricted.subgroup != "all").sum()
    shown = sub[~sub.suppressed]
    np.testing.assert_allclose(shown.score, shown.score_r, atol=1e-12)
    assert (shown.n == shown.n_r).all() and (shown.n >= MIN).all()
    national = restricted[restricted.level == "national"].set_index(["subgroup", "subgroup_value", "measure"])
    behind = national.loc[list(zip(sub.subgroup, sub.subgroup_value, sub.measure))]
    np.testing.assert_allclose(sub.national_score[sub.national_score.notna()], behind.score[sub.national_score.notna().to_numpy()], atol=1e-12)
    # Where the national figure is withheld (national_measures / subgroup_measures), no benchmark.
    published_national = sub[sub.level == "national"].set_index(["subgroup", "subgroup_value", "measure"]).suppressed
    withheld = published_national.reindex(list(zip(sub.subgroup, sub.subgroup_value, sub.measure))).to_numpy()
    assert (sub.national_score.isna().to_numpy() == withheld.astype(bool)).all()
    for name, level, unit in (("la_measures", "la", "la_code"), ("region_measures", "region", "region_code"), ("trust_measures", "trust", "trust_id")):
        table = _part(tables[name], key_stage, "unvalidated").assign(level=level, subgroup="all", subgroup_value="all")
        table = table.rename(columns={unit: "unit_id"})
        if name == "trust_measures":
            assert ((table.schools_counted >= ROLLUP.trusts.min_schools) == table.eligible).all()
            table = table[table.eligible]
        merged = table.merge(restricted, on=KEY, suffixes=("", "_r"), how="left", validate="one_to_one")
        assert merged.score_r.notna().all(), name
        shown = merged[~merged.suppressed]
        np.testing.assert_allclose(shown.score, shown.score_r, atol=1e-12)
        assert (merged.suppressed == (merged.n_r < MIN)).all(), name


# ----------------------------------------------------------------------------- suppression


def _true_counts(tables, name: str, frame: pd.DataFrame, key_stage: str, stage: str) -> pd.Series:
    """The pupils behind each published row, from the restricted tables."""
    restricted = _part(tables["unsuppressed_measures"], key_stage, stage)
    level_tables = {"trust_measures": ("trust", "trust_id"), "la_measures": ("la", "la_code"), "region_measures": ("region", "region_code")}
    if name == "school_measures":
        scores = _part(tables["school_scores"], key_stage, stage)
        return frame.merge(scores, on=["school_id", "measure"], how="left", suffixes=("", "_r")).n_r
    if name == "national_estimates":
        full = _part(tables["national_estimates_unsuppressed"], key_stage, stage)
        return frame.merge(full, on=["subject", "prior_attainment_group"], how="left", suffixes=("", "_r")).n_r
    if name == "cva_model":
        return frame.n_pupils
    if name == "identified_schools":
        keyed = frame.assign(level="school", unit_id=frame.school_id)
    elif name == "subgroup_measures":
        keyed = frame
    elif name == "national_measures":
        keyed = frame.assign(level="national", unit_id="national", subgroup="all", subgroup_value="all")
    else:
        level, unit = level_tables[name]
        keyed = frame.assign(level=level, unit_id=frame[unit], subgroup="all", subgroup_value="all")
    return keyed.merge(restricted, on=KEY, how="left", suffixes=("", "_r")).n_r


FIGURES = {"cva_model": ("term_mean", "estimate", "std_error")}

# What a withheld row may still show, listed here rather than read from the schemas, so a
# figure column the schemas forget to withhold fails the scan: identifiers and labels,
# the suppression columns, trust eligibility (counts of schools), and figures of other
# rows that are checked on their own rows (trust_score; national_score, checked below;
# the identification cut-offs and the counts of schools with a shown figure).
MAY_SHOW_WHEN_WITHHELD = {
    "academic_year", "key_stage", "data_stage", "school_id", "measure", "la_code", "la_name", "region_code",
    "region_name", "trust_id", "trust_name", "level", "unit_id", "subgroup", "subgroup_value", "subject",
    "prior_attainment_group", "source", "in_trust_figure", "similar_schools_group", "quadrant_attainment_measure",
    "eligible", "eligibility_reason", "schools_in_trust", "schools_counted", "trust_score", "national_score",
    "schools_ranked_in_trust", "similar_schools_count", "eligible_subgroups", "lowest_cutoff_score", "exit_cutoff_score",
    "identified_last_year", "status", "identified", "suppressed", "suppression_reason", "trend_suppression_reason",
}


@pytest.mark.parametrize("key_stage, stage", PARTITIONS)
def test_no_published_table_shows_a_figure_of_fewer_than_6_pupils(tables, key_stage, stage):
    published = [s for s in OUTPUT_TABLES.values() if s.audience == "published"]
    assert {s.name for s in published} >= {"school_measures", "trust_measures", "la_measures", "region_measures",
                                            "national_measures", "subgroup_measures", "identified_schools", "national_estimates"}
    restricted = _part(tables["unsuppressed_measures"], key_stage, stage)
    national_n = restricted[restricted.level == "national"].set_index(["subgroup", "subgroup_value", "measure"]).n
    checked = 0
    for schema in published:
        frame = _part(tables[schema.name], key_stage, stage)
        true_n = _true_counts(tables, schema.name, frame, key_stage, stage).to_numpy().astype(float)
        small = ~np.isnan(true_n) & (true_n < MIN)
        if schema.name in FIGURES:
            has_figure = frame[list(FIGURES[schema.name])].notna().any(axis=1).to_numpy()
        else:
            figures = [c for c in frame.columns if c not in MAY_SHOW_WHEN_WITHHELD]
            has_figure = frame[figures].notna().any(axis=1).to_numpy()
        offending = frame[has_figure & small]
        assert offending.empty, f"{schema.name} shows figures of fewer than {MIN} pupils:\n{offending.head()}"
        if "national_score" in frame:
            keyed = frame.assign(subgroup=frame.get("subgroup", "all"), subgroup_value=frame.get("subgroup_value", "all"))
            shown = keyed[keyed.national_score.notna()]
            behind = national_n.reindex(list(zip(shown.subgroup, shown.subgroup_value, shown.measure))).to_numpy()
            assert (behind >= MIN).all(), f"{schema.name} shows a national figure of fewer than {MIN} pupils"
        if "suppressed" in frame:
            withheld = frame[frame.suppressed]
            assert withheld.suppression_reason.isin(["below_minimum_pupils", "secondary"]).all(), schema.name
            assert withheld[list(schema.suppressible)].isna().all().all(), schema.name
            assert frame[~frame.suppressed].suppression_reason.isna().all(), schema.name
        checked += len(frame)
    assert checked > 10_000


@pytest.mark.parametrize("key_stage", ["ks2", "ks4"])
def test_withheld_subgroup_values_never_total_1_to_5_pupils(tables, key_stage):
    """Secondary suppression: the withheld values of a dimension cannot be worked out together."""
    restricted = _part(tables["unsuppressed_measures"], key_stage, "validated")
    sub = _part(tables["subgroup_measures"], key_stage, "validated").merge(restricted, on=KEY, suffixes=("", "_r"))
    assert (sub.suppression_reason == "secondary").any() and (sub.suppression_reason == "below_minimum_pupils").any()
    withheld = sub[sub.suppressed].groupby(["level", "unit_id", "measure", "subgroup"]).n_r.sum()
    # Allowed below the minimum only when the unit's own figure is withheld too (nothing to subtract from).
    everyone = restricted[restricted.subgroup == "all"].set_index(["level", "unit_id", "measure"]).n
    unit_n = everyone.loc[[key[:3] for key in withheld.index]].to_numpy()
    assert ((withheld.to_numpy() >= MIN) | (unit_n < MIN)).all()
    assert ((withheld.to_numpy() < MIN) & (unit_n < MIN)).any()  # the exception does occur


# ----------------------------------------------------------------------------- schools, trusts, identification


@pytest.mark.parametrize("key_stage, stage", PARTITIONS)
def test_school_measures_are_the_school_scores_with_comparisons(tables, key_stage, stage):
    schools = _part(tables["school_measures"], key_stage, stage)
    scores = _part(tables["school_scores"], key_stage, stage)
    merged = schools.merge(scores, on=["school_id", "measure"], suffixes=("", "_r"), how="outer", indicator=True)
    assert (merged._merge == "both").all()
    assert (merged.suppressed == (merged.n_r < MIN)).all()
    shown = merged[~merged.suppressed]
    np.testing.assert_allclose(shown.score, shown.score_r, atol=1e-12)
    national = _part(tables["national_measures"], key_stage, stage).set_index("measure").score
    np.testing.assert_allclose(schools.national_score, national.loc[schools.measure], atol=1e-12)
    shown = schools[~schools.suppressed]
    # Ranks in trust and among similar schools: 1 + the number of shown figures above.
    for group, rank, count in (("trust_id", "rank_in_trust", "schools_ranked_in_trust"),
                               ("similar_schools_group", "similar_schools_rank", "similar_schools_count")):
        ranked = shown[shown[group].notna()]
        expected = ranked.groupby([group, "measure"]).score.rank(method="min", ascending=False)
        assert (ranked[rank] == expected).all(), rank
        assert (ranked[count] == ranked.groupby([group, "measure"]).score.transform("size")).all(), count
    assert schools[schools.trust_id.isna()].rank_in_trust.isna().all()
    # Quadrants: each side high when at or above the national figure.
    pairs = ROLLUP.quadrants[key_stage]
    with_quadrant = shown[shown.quadrant.notna()]
    assert len(with_quadrant) > 0 and set(with_quadrant.measure) <= set(pairs)
    by_school = shown.set_index(["school_id", "measure"])
    for row in with_quadrant.itertuples():
        attainment = by_school.loc[(row.school_id, pairs[row.measure])]
        high_a = "high" if attainment.score >= attainment.national_score else "low"
        high_p = "high" if row.score >= row.national_score else "low"
        assert row.quadrant == f"{high_a}_attainment_{high_p}_progress"
        assert row.quadrant_attainment_measure == pairs[row.measure]


def test_trust_membership_flags_follow_the_rule(tables):
    trusts = _school_trusts(tables).set_index("school_id")
    schools = _part(tables["school_measures"], "ks2", "validated").drop_duplicates("school_id").set_index("school_id")
    in_trust = schools[schools.trust_id.notna()]
    assert len(in_trust) > 20
    assert (in_trust.trust_id == trusts.trust_id.loc[in_trust.index]).all()
    assert (in_trust.in_trust_figure == trusts.counted.loc[in_trust.index]).all()
    assert in_trust.in_trust_figure.any() and not in_trust.in_trust_figure.all()
    trust_rows = _part(tables["trust_measures"], "ks2", "validated")
    assert trust_rows.eligible.any() and (~trust_rows.eligible).any()
    assert (trust_rows[~trust_rows.eligible].eligibility_reason == "too_few_counted_schools").all()
    assert trust_rows[~trust_rows.eligible].score.isna().all()


@pytest.mark.parametrize("key_stage, stage", PARTITIONS)
def test_identified_schools_are_the_lowest_10_percent(tables, key_stage, stage):
    rules = ROLLUP.identification
    measure = rules.measure[key_stage]
    restricted = _part(tables["unsuppressed_measures"], key_stage, stage)
    chosen = restricted[(restricted.level == "school") & (restricted.measure == measure)]
    chosen = chosen[[value in rules.subgroups.get(dimension, ()) for dimension, value in zip(chosen.subgroup, chosen.subgroup_value)]]
    eligible = chosen[chosen.n >= rules.min_pupils].copy()
    eligible["rank"] = eligible.score.rank(method="min")
    eligible["percentile"] = 100 * eligible["rank"] / len(eligible)
    expected = eligible[eligible.percentile <= rules.lowest_percent]
    identified = _part(tables["identified_schools"], key_stage, stage)
    assert len(identified) == len(expected) > 0  # no last year: only newly identified
    assert set(identified.status) == {"identified"} and identified.identified_last_year.isna().all()
    keys = ["school_id", "subgroup", "subgroup_value"]
    assert set(map(tuple, identified[keys].to_numpy())) == set(map(tuple, expected.rename(columns={"unit_id": "school_id"})[keys].to_numpy()))
    assert (identified.eligible_subgroups == len(eligible)).all()
    assert abs(len(expected) / len(eligible) - rules.lowest_percent / 100) < 0.02


def test_every_measure_at_every_level_and_the_run_log(tables):
    for key_stage, stage in PARTITIONS:
        restricted = _part(tables["unsuppressed_measures"], key_stage, stage)
        measures = set(_part(tables["school_scores"], key_stage, stage).measure)
        assert measures == {m.name for m in MEASURES[key_stage]}
        for level in ("school", "trust", "la", "region", "national"):
            assert set(restricted[(restricted.level == level) & (restricted.subgroup == "all")].measure) == measures, (key_stage, level)
        progress = [m.name for m in MEASURES[key_stage] if m.kind == PROGRESS]
        national = _part(tables["national_measures"], key_stage, stage).set_index("measure")
        assert national.loc[progress].band.notna().all() and national.loc[progress].lower.notna().all()
    runs = tables["runs"]
    for counts in runs[runs.status == "succeeded"].row_counts_json:
        rollup = json.loads(counts)["rollup"]
        assert set(rollup) == {"school", "trust", "la", "region", "national"}
        assert all(level["figures"] >= level["withheld"] >= 0 for level in rollup.values())
