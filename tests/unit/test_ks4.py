"""KS2-KS4 Attainment 8 and Progress 8: year tables, scenario tables (tests/scenarios/ks4/),
DfE's worked 2024 figures through a release in published mode, and releases of a small
generated cohort in both modes."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import yaml
from pyspark.sql import types as T

from valueadded.cli import build_parser, main
from valueadded.config import REPO_CONF_DIR, ConfigError, load_release_config
from valueadded.io.delta_store import TableStore
from valueadded.io.schemas import KS4_RESULTS, NATIONAL_ESTIMATES_UNSUPPRESSED, PUPIL_PROGRESS, PUPIL_RESULTS, RUNS, SCHOOL_SCORES
from valueadded.measures import published
from valueadded.measures.ks4 import progress_long_frame, with_attainment_and_prior
from valueadded.measures.ks4_tables import KS4_SUBJECTS, load_ks4_tables, parse_ks4_tables
from valueadded.measures.published import check_applies, load_published_estimates, with_published_estimates
from valueadded.pipeline import run_release
from valueadded.synth.cohort import generate_cohort

from support.inputs import add_ks4_pupil
from support.pseudonyms import pseudonym_of

YEAR = 2024
PUBLISHED = "dfe-ks4-2024"
SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios" / "ks4"
DFE_FILES = Path(__file__).resolve().parents[3] / "shared" / "reference" / "dfe-ks4-2024"
TABLES = load_ks4_tables(YEAR)
ELEMENTS = ("english", "maths", "ebacc", "open")


def _rows(name: str) -> list[dict[str, str]]:
    with (SCENARIOS / name).open(newline="") as handle:
        return list(csv.DictReader(handle))


def _none(value: str):
    return value if value != "" else None


def _number(value: str) -> float | None:
    return float(value) if value != "" else None


# ----------------------------------------------------------------------- year tables


def test_year_tables_are_dfe_2024_groups():
    assert len(TABLES.prior_attainment_groups) == 34
    assert TABLES.prior_attainment_groups[0] == (59.0, 82.0) and TABLES.prior_attainment_groups[-1] == (119.5, 120.0)
    # The configured groups are the ranges in DfE's published files.
    check_applies(load_published_estimates(PUBLISHED), "ks4", KS4_SUBJECTS, TABLES.prior_attainment_groups, TABLES.source)
    assert TABLES.divisors == {"progress_8": 10, "english": 2, "maths": 2, "ebacc": 3, "open": 3,
                               "ebacc_science": 1, "ebacc_humanities": 1, "ebacc_languages": 1}
    assert set(TABLES.well_thresholds.values()) == {0.5}


def _year_content() -> dict:
    return yaml.safe_load(Path(TABLES.source).read_text())


@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(extra_key=1), "unknown key(s) ['extra_key']"),
    (lambda c: c.pop("divisors"), "missing key(s) ['divisors']"),
    (lambda c: c["divisors"].pop("open"), "divisors: unknown key(s) [], missing key(s) ['open']"),
    (lambda c: c["nominal_scores"].update(pscale_typo={}), "unknown key(s) ['pscale_typo']"),
    (lambda c: c["prior_attainment_groups"].__setitem__(1, [83, 86]), "group 2 starts at 83"),
    (lambda c: c["prior_attainment_groups"].pop(), "to the top scaled score 120"),
    (lambda c: c.update(estimate_method="mode"), "estimate_method must be mean or median"),
])
def test_bad_year_tables_name_the_file_and_key(change, message, tmp_path):
    content = _year_content()
    change(content)
    path = tmp_path / "2024.yaml"
    with pytest.raises(ConfigError) as error:
        parse_ks4_tables(path, content)
    assert str(path) in str(error.value) and message in str(error.value)


# ---------------------------------------------------------------- published estimates


def test_published_table_reads_dfe_files_column_by_name():
    table = load_published_estimates(PUBLISHED)
    assert table.key_stage == "ks4" and table.source == "published:dfe-ks4-2024"
    assert table.estimates[("progress_8", 20)] == 47.45 and table.estimates[("english", 20)] == 10.28
    assert table.estimates[("ebacc_languages", 34)] == 7.79
    # DfE's SD file lists the open element before the EBacc element.
    assert table.national_sds == {
        "progress_8": 1.41628, "english": 1.614052, "maths": 1.487134, "open": 1.616699, "ebacc": 1.637291,
        "ebacc_science": 1.456564513, "ebacc_humanities": 1.775990694, "ebacc_languages": 1.95913665,
    }


def test_published_files_are_dfe_files_unchanged():
    if not DFE_FILES.is_dir():
        pytest.skip("no ../shared/reference beside the project")
    ours = REPO_CONF_DIR / "reference" / "published" / PUBLISHED
    for source in DFE_FILES.iterdir():
        if source.suffix == ".csv" or source.name == "LICENSE":
            assert (ours / source.name).read_bytes() == source.read_bytes(), source.name


@pytest.mark.parametrize("edit, message", [
    (lambda folder: (folder / "estimates.yaml").write_text((folder / "estimates.yaml").read_text().replace("English average", "English avg")),
     "p8_att8_splits.csv: no column 'English avg'"),
    (lambda folder: (folder / "p8_stdev_file_named.csv").write_text("Progress 8\n"), "expected one row of standard deviations, found 0"),
    (lambda folder: (folder / "ebac_att8_splits.csv").unlink(), "ebac_att8_splits.csv: published estimates file not found"),
    (lambda folder: (folder / "p8_att8_splits.csv").write_text(
        (folder / "p8_att8_splits.csv").read_text().replace("20,105.5 to 106,47.45", "20,105.5 to 106,n/a")),
     "column 'Attainment 8 average' row 21: 'n/a' is not a number"),
])
def test_broken_published_table_names_the_file(edit, message, tmp_path, monkeypatch):
    shutil.copytree(published.published_dir(PUBLISHED), tmp_path / PUBLISHED)
    edit(tmp_path / PUBLISHED)
    monkeypatch.setattr(published, "PUBLISHED_DIR", tmp_path)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_published_estimates(PUBLISHED)


def test_published_table_must_match_the_year_groups():
    table = load_published_estimates(PUBLISHED)
    shifted = ((59.0, 82.5), (83.0, 86.0), *TABLES.prior_attainment_groups[2:])
    with pytest.raises(ConfigError, match="group ranges of 'dfe-ks4-2024' differ"):
        check_applies(table, "ks4", KS4_SUBJECTS, shifted, "a year file")
    with pytest.raises(ConfigError, match="is for ks4, not ks2"):
        check_applies(table, "ks2", KS4_SUBJECTS, TABLES.prior_attainment_groups, "a year file")


def test_command_line_option_overrides_the_configuration(tmp_path):
    config = load_release_config()
    assert config.published_estimates["ks4"] is None
    args = build_parser().parse_args(["release", "--key-stage", "ks4", "--published-estimates", PUBLISHED])
    assert args.published_estimates == PUBLISHED
    assert with_published_estimates(config, PUBLISHED).published_estimates == {"ks2": None, "ks4": PUBLISHED}
    with pytest.raises(ConfigError, match="no published estimates table 'nonesuch'"):
        with_published_estimates(config, "nonesuch")
    # A bad name stops the run before Spark starts, with exit code 2.
    assert main(["release", "--input", str(tmp_path), "--output", str(tmp_path / "out"), "--key-stage", "ks4",
                 "--published-estimates", "nonesuch"]) == 2


# ------------------------------------------------------------------- scenario tables

CONTEXT_FIELDS = [
    T.StructField("case", T.StringType()), T.StructField("school_id", T.StringType()),
    T.StructField("included", T.BooleanType()), T.StructField("exclusion_reason", T.StringType()),
    T.StructField("school_provision", T.StringType()), T.StructField("school_sector", T.StringType()),
]


def _pupil_frame(spark, rows: list[dict[str, str]]):
    """A pupil table of one included mainstream pupil per scenario row (unlisted results columns: 0 or null)."""
    schema = T.StructType([*CONTEXT_FIELDS, *KS4_RESULTS.spark_schema().fields])
    data = []
    for number, row in enumerate(rows):
        values = {"case": row["case"], "school_id": "S1", "included": True, "exclusion_reason": None,
                  "school_provision": "mainstream", "school_sector": "state_funded", "pupil_id": f"P{number:03d}"}
        for column in KS4_RESULTS.columns[1:]:
            given = row.get(column.name, row.get(column.name.removeprefix("ks2_"), ""))
            if column.type == "int":
                values[column.name] = int(given) if given else None
            elif column.type == "double":
                values[column.name] = float(given) if given else (None if column.nullable else 0.0)
            else:
                values[column.name] = _none(given)
        data.append(tuple(values[field.name] for field in schema.fields))
    return spark.createDataFrame(data, schema)


def test_attainment_8_elements(spark):
    rows = _rows("attainment_8.csv")
    got = {r.case: r for r in with_attainment_and_prior(_pupil_frame(spark, rows), TABLES).collect()}
    for row in rows:
        for element in ELEMENTS:
            assert got[row["case"]][f"{element}_element"] == pytest.approx(float(row[f"expected_{element}"]), abs=1e-9), (row["case"], element)
        assert got[row["case"]].attainment_8 == pytest.approx(float(row["expected_attainment_8"]), abs=1e-9), row["case"]


def test_every_prior_attainment_group_boundary(spark):
    rows = _rows("prior_attainment_groups.csv")
    # The table covers both sides of every edge of the year's groups, and both ends.
    edges = {float(row["expected_prior_attainment"]) for row in rows}
    for low, high in TABLES.prior_attainment_groups:
        assert {low, high} <= edges
    got = {r.case: r for r in with_attainment_and_prior(_pupil_frame(spark, rows), TABLES).collect()}
    for row in rows:
        found = got[row["case"]]
        assert (found.prior_attainment, found.prior_attainment_group) == (float(row["expected_prior_attainment"]), int(row["expected_group"])), row["case"]


def test_nominal_prior_attainment_and_no_prior_exclusion(spark):
    rows = _rows("nominal_prior_attainment.csv")
    pupils = with_attainment_and_prior(_pupil_frame(spark, rows), TABLES)
    got = {r.case: r for r in pupils.collect()}
    long = progress_long_frame(pupils).where("subject = 'progress_8'").join(pupils.select("pupil_id", "case"), "pupil_id")
    reasons = {r.case: (r.exclusion_reason, r.in_progress, r.in_national) for r in long.collect()}
    for row in rows:
        found = got[row["case"]]
        assert found.prior_attainment == _number(row["expected_prior_attainment"]), row["case"]
        assert found.prior_attainment_group == (int(row["expected_group"]) if row["expected_group"] else None), row["case"]
        with_score = row["expected_reason"] == ""
        assert reasons[row["case"]] == (_none(row["expected_reason"]), with_score, with_score), row["case"]


# ------------- a generated cohort with DfE's worked figures added, released in both modes


def _varied_pupil(number: int) -> dict:
    """KS2 105 and 106 (group 20), points varied so that no group has zero spread."""
    return {
        "english_points": 4.0 + (number % 5) * 0.5, "maths_points": 3.0 + (number % 7) * 0.5,
        "ebacc_1_points": 5.0 + (number % 3), "ebacc_2_points": 4.0 + (number % 4) * 0.5, "ebacc_3_points": float(number % 2) * 3,
        "open_1_points": 6.0 - (number % 3), "open_2_points": 5.0, "open_3_points": (number % 6) * 0.75,
        "science_points": 3.0 + (number % 5),
    }


def _add_worked_schools(input_dir: Path) -> str:
    """Add three secondaries of 20, 100 and 180 pupils to a generated cohort, DfE's worked pupil first.

    The rows go in as one more part file per table, typed like the generated ones.
    Returns the worked pupil's id.
    """
    worked = _rows("worked_published_2024.csv")[0]
    schools = ds.dataset(str(input_dir / "schools"), format="parquet").to_table().to_pylist()
    secondary = next(s for s in schools if s["phase"] == "secondary" and s["provision"] == "mainstream" and s["sector"] == "state_funded")
    added = {"schools": [], "pupils": [], "ks4_results": []}
    number = 0
    for school, row in enumerate(_rows("worked_intervals_published_2024.csv")):
        school_id = f"99900{school + 1}"
        added["schools"].append({**secondary, "school_id": school_id, "school_name": f"Worked example school {school + 1}"})
        for _ in range(int(row["pupils_in_school"])):
            add_ks4_pupil(added, f"W{number:012d}", school_id, results=_varied_pupil(number))
            number += 1
    slots = {name: float(worked[name]) for name in KS4_RESULTS.names if name.endswith("_points") and name in worked}
    added["ks4_results"][0].update(
        ks2_reading_scaled_score=int(worked["ks2_reading_scaled_score"]), ks2_maths_scaled_score=int(worked["ks2_maths_scaled_score"]), **slots
    )
    for table, rows in added.items():
        schema = ds.dataset(str(input_dir / table), format="parquet").schema
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), input_dir / table / "part-99999.parquet")
    return added["ks4_results"][0]["pupil_id"]


@pytest.fixture(scope="module")
def generated(spark, tmp_path_factory):
    """The releases (computed and published) of one generated cohort with the worked schools added."""
    root = tmp_path_factory.mktemp("ks4-generated")
    generate_cohort(root / "input", year=YEAR, seed=23, scale=0.02, files=2)
    worked_pupil = _add_worked_schools(root / "input")
    stores = {}
    for mode, config in (("computed", load_release_config()), ("published", with_published_estimates(load_release_config(), PUBLISHED))):
        run_release(spark, config, root / "input", root / mode, YEAR, "ks4", "unvalidated")
        stores[mode] = TableStore(spark, root / mode)
    return stores, pseudonym_of(worked_pupil)  # the pupil's id in the outputs


def _read(store, schema) -> pd.DataFrame:
    return store.read(schema, YEAR, "ks4", "unvalidated").toPandas()


@pytest.mark.parametrize("mode", ["computed", "published"])
def test_every_included_pupil_with_prior_has_scores_and_rows_reconcile(generated, mode):
    store = generated[0][mode]
    runs = _read(store, RUNS)
    assert list(runs.status) == ["succeeded"]
    assert all(check["holds"] for check in json.loads(runs.row_counts_json[0])["reconciliation"].values())
    results = _read(store, PUPIL_RESULTS).set_index("pupil_id")
    progress = _read(store, PUPIL_PROGRESS)
    assert len(progress) == len(results) * len(KS4_SUBJECTS)
    p8 = progress[progress.subject == "progress_8"].set_index("pupil_id")
    expected = results.included & results.prior_attainment_group.notna()
    assert expected.sum() > 0 and (~expected).sum() > 0
    assert p8.loc[expected[expected].index, "progress"].notna().all()
    assert p8.loc[expected[~expected].index, "progress"].isna().all()
    reasons = p8.loc[expected[~expected].index, "exclusion_reason"]
    assert reasons.notna().all() and "no_prior_attainment" in set(reasons)
    # Pupils of special schools get scores but do not count nationally.
    special = results.index[results.school_provision == "special"]
    assert p8.loc[special, "in_progress"].any() and not p8.loc[special, "in_national"].any()
    # EBacc subject value added only for pupils entered in the subject.
    science = progress[progress.subject == "ebacc_science"]
    assert (science.in_progress == (science.outcome.notna() & science.pupil_id.map(expected))).all()
    assert "not_entered" in set(science[~science.in_progress].exclusion_reason)


def test_computed_estimates_are_group_means_of_national_pupils(generated):
    store = generated[0]["computed"]
    progress = _read(store, PUPIL_PROGRESS)
    national = progress[progress.in_national]
    recomputed = national.groupby(["subject", "prior_attainment_group"]).outcome.agg(["mean", "count", "std"])
    published = _read(store, NATIONAL_ESTIMATES_UNSUPPRESSED).set_index(["subject", "prior_attainment_group"])
    joined = published.join(recomputed, how="outer")
    assert set(published.source) == {"computed"}
    assert (joined["n"] == joined["count"]).all()
    assert joined["estimate"].to_numpy() == pytest.approx(joined["mean"].to_numpy(), abs=1e-9)
    assert joined["outcome_sd"].to_numpy() == pytest.approx(joined["std"].to_numpy(), abs=1e-9, nan_ok=True)
    # Within each group, progress before the adjustment averages zero.
    means = national.groupby(["subject", "prior_attainment_group"]).progress.mean()
    assert means.abs().max() < 1e-9
    assert published.progress_mean.abs().max() < 1e-9
    # Attainment 8 estimate = the sum of the element estimates (same pupils).
    estimate = published.estimate.unstack("subject")
    assert estimate.progress_8.to_numpy() == pytest.approx(estimate[list(ELEMENTS)].sum(axis=1).to_numpy(), abs=1e-9)
    # The school A8 measure is the mean A8 of the school's included pupils.
    results = _read(store, PUPIL_RESULTS)
    a8 = progress[progress.subject == "progress_8"].merge(results[["pupil_id", "included"]], on="pupil_id")
    by_school = a8[a8.included].groupby("school_id").outcome.agg(["mean", "count"])
    schools = _read(store, SCHOOL_SCORES)
    attainment = schools[schools.measure == "attainment_8"].set_index("school_id").join(by_school, how="outer")
    assert (attainment.n == attainment["count"]).all()
    assert attainment.score.to_numpy() == pytest.approx(attainment["mean"].to_numpy(), abs=1e-9)


def test_computed_progress_caps_and_intervals_recomputed_from_pupil_rows(generated):
    """SPEC 2.1 redone in pandas from pupil_progress: progress, z*, caps, school scores and intervals."""
    store = generated[0]["computed"]
    progress = _read(store, PUPIL_PROGRESS)
    national = _read(store, NATIONAL_ESTIMATES_UNSUPPRESSED).set_index(["subject", "prior_attainment_group"])
    z_star = json.loads(_read(store, RUNS).row_counts_json[0])["ks4_z_star"]
    scored = progress[progress.in_progress].copy()
    divisor = scored.subject.map(TABLES.divisors)
    assert scored.progress.to_numpy() == pytest.approx(((scored.outcome - scored.estimate) / divisor).to_numpy(), abs=1e-9)
    in_national = scored[scored.in_national].copy()
    groups = in_national.groupby(["subject", "prior_attainment_group"]).progress
    in_national["z"] = (in_national.progress - groups.transform("mean")) / groups.transform("std")
    for subject, rows in in_national.groupby("subject"):
        k = math.floor(TABLES.extreme_share * len(rows) + 0.5)
        assert z_star[subject] == pytest.approx(rows.sort_values(["z", "pupil_id"]).z.iloc[k - 1], abs=1e-12), subject
    cap = national.progress_mean + national.progress_sd * national.index.get_level_values("subject").map(z_star).to_numpy()
    assert national.cap.to_numpy() == pytest.approx(cap.to_numpy(), abs=1e-9)
    scored = scored.join(national.cap, on=["subject", "prior_attainment_group"])
    # A pupil tied with the z* pupil is at the cap already and is not capped; every other
    # pupil is capped exactly when below the cap.
    tied = (scored.progress - scored.cap).abs() <= 1e-9
    assert (scored.capped[~tied] == (scored.progress < scored.cap)[~tied]).all() and scored.capped.any()
    assert not scored.capped[tied].any()
    assert scored.adjusted_progress.to_numpy() == pytest.approx(scored.progress.clip(lower=scored.cap).to_numpy(), abs=1e-12)
    national_sd = scored[scored.in_national].groupby("subject").adjusted_progress.std()
    by_school = scored.groupby(["school_id", "subject"]).adjusted_progress.agg(["mean", "count"]).reset_index()
    by_school["measure"] = by_school.subject.map(lambda s: s if s == "progress_8" else f"progress_{s}")
    by_school["half_width"] = 1.96 * by_school.subject.map(national_sd) / by_school["count"].map(math.sqrt)
    schools = _read(store, SCHOOL_SCORES).merge(by_school, on=["school_id", "measure"], how="right")
    assert (schools.n == schools["count"]).all()
    assert schools.score.to_numpy() == pytest.approx(schools["mean"].to_numpy(), abs=1e-9)
    assert ((schools.upper - schools.lower) / 2).to_numpy() == pytest.approx(schools.half_width.to_numpy(), abs=1e-9)


def test_published_mode_applies_dfe_estimates_and_sds(generated):
    store = generated[0]["published"]
    table = load_published_estimates(PUBLISHED)
    national = _read(store, NATIONAL_ESTIMATES_UNSUPPRESSED)
    assert set(national.source) == {"published:dfe-ks4-2024"} and national.n.isna().all() and national.outcome_sd.isna().all()
    assert {(r.subject, r.prior_attainment_group): r.estimate for r in national.itertuples()} == table.estimates
    progress = _read(store, PUPIL_PROGRESS)
    scored = progress[progress.in_progress]
    expected = scored.apply(lambda r: (r.outcome - table.estimates[(r.subject, r.prior_attainment_group)]) / TABLES.divisors[r.subject], axis=1)
    assert scored.progress.to_numpy() == pytest.approx(expected.to_numpy(), abs=1e-9)
    schools = _read(store, SCHOOL_SCORES)
    progress_rows = schools[schools.measure.str.startswith("progress_")]
    subject = progress_rows.measure.map(lambda m: m if m == "progress_8" else m.removeprefix("progress_"))
    half_width = (progress_rows.upper - progress_rows.lower) / 2
    expected_width = 1.96 * subject.map(table.national_sds) / progress_rows.n.map(math.sqrt)
    assert half_width.to_numpy() == pytest.approx(expected_width.to_numpy(), abs=1e-9)
    assert set(subject) == set(KS4_SUBJECTS)


def test_worked_pupil_figures(generated):
    stores, pupil_id = generated
    results = _read(stores["published"], PUPIL_RESULTS).set_index("pupil_id")
    progress = _read(stores["published"], PUPIL_PROGRESS)
    mine = progress[progress.pupil_id == pupil_id].set_index("subject")
    for row in _rows("worked_published_2024.csv"):
        assert results.loc[pupil_id, "prior_attainment"] == float(row["expected_prior_attainment"])
        assert results.loc[pupil_id, "prior_attainment_group"] == int(row["expected_group"])
        found = mine.loc[row["subject"]]
        assert found.outcome == pytest.approx(float(row["expected_outcome"]), abs=1e-9), row["subject"]
        assert found.estimate == float(row["expected_estimate"]), row["subject"]
        assert found.progress == pytest.approx(float(row["expected_progress"]), abs=1e-9), row["subject"]


def test_worked_interval_half_widths(generated):
    stores, _ = generated
    schools = _read(stores["published"], SCHOOL_SCORES).set_index(["school_id", "measure"])
    for school, row in enumerate(_rows("worked_intervals_published_2024.csv")):
        found = schools.loc[(f"99900{school + 1}", row["subject"])]
        assert found.n == int(row["pupils_in_school"])
        assert round((found.upper - found.lower) / 2, 4) == float(row["expected_half_width"]), row["case"]
