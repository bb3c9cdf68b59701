"""Tests of the generated national cohort (valueadded.synth.cohort), at a small scale, no Spark.

One cohort at scale 0.02 (a few hundred schools, ~25,000 pupils) is generated once per module;
the determinism test generates two more with different file counts.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from valueadded.io.schemas import A8_SLOT_COLUMNS, INPUT_TABLES
from valueadded.synth.cohort import generate_cohort
from valueadded.synth.geography import ETHNIC_GROUPS
from valueadded.synth.truth import design_matrix

YEAR, SEED, SCALE, FILES = 2024, 11, 0.02, 3
PUPIL_LEVEL = ("pupils", "ks2_results", "ks4_results")
A8_WEIGHTS = np.array([2, 2, 1, 1, 1, 1, 1, 1])


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("cohort")
    return out, generate_cohort(out, YEAR, SEED, scale=SCALE, files=FILES)


def _read(out: Path, table: str) -> pd.DataFrame:
    return pq.read_table(out / table).to_pandas()


@pytest.fixture(scope="module")
def tables(cohort) -> dict[str, pd.DataFrame]:
    out, _ = cohort
    frames = {name: _read(out, name) for name in INPUT_TABLES}
    frames["pupil_truth"] = pq.read_table(out / "ground_truth" / "pupil_truth.parquet").to_pandas()
    frames["school_effects"] = pq.read_table(out / "ground_truth" / "school_effects.parquet").to_pandas()
    return frames


def test_every_file_has_the_contract_schema(cohort):
    out, _ = cohort
    for name, table in INPUT_TABLES.items():
        parts = sorted((out / name).glob("part-*.parquet"))
        assert parts, name
        if name in PUPIL_LEVEL:
            assert len(parts) == FILES, name
        for part in parts:
            schema = pq.read_schema(part).remove_metadata()
            assert schema.equals(table.arrow_schema(), check_metadata=False), (part, schema)
            for field, expected in zip(schema, table.arrow_schema()):
                assert field.nullable == expected.nullable, (part, field.name)


def test_manifest_counts_equal_the_files(cohort):
    out, manifest = cohort
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert (manifest["year"], manifest["seed"], manifest["scale"], manifest["files"]) == (YEAR, SEED, SCALE, FILES)
    for name in INPUT_TABLES:
        assert manifest["row_counts"][name] == pq.read_table(out / name).num_rows, name
    truth_rows = pq.read_metadata(out / "ground_truth" / "pupil_truth.parquet").num_rows
    assert manifest["ground_truth_row_counts"]["pupil_truth"] == truth_rows == manifest["row_counts"]["pupils"]


def test_schools_cover_every_kind_and_unique_ids(tables):
    schools = tables["schools"]
    assert schools.school_id.is_unique and schools.school_id.str.fullmatch(r"\d{6}").all()
    kinds = set(zip(schools.phase, schools.provision, schools.sector))
    for kind in (("primary", "mainstream", "state_funded"), ("secondary", "mainstream", "state_funded"),
                 ("primary", "special", "state_funded"), ("secondary", "special", "state_funded"),
                 ("primary", "mainstream", "independent"), ("secondary", "mainstream", "independent")):
        assert kind in kinds
    assert 300 <= len(schools) <= 700
    assert schools.region_code.nunique() == 9
    assert schools.la_code.str.fullmatch(r"\d{3}").all()


def test_cohort_sizes_and_characteristic_shares(tables):
    pupils, truth = tables["pupils"], tables["pupil_truth"]
    assert pupils.set_index(["pupil_id", "key_stage"]).index.is_unique
    assert pupils.pupil_id.is_unique  # unique across both cohorts
    counts = pupils.key_stage.value_counts()
    assert 9_000 <= counts["ks2"] <= 18_000 and 9_000 <= counts["ks4"] <= 18_000
    assert 0.46 <= (pupils.gender == "F").mean() <= 0.52
    assert 0.19 <= pupils.fsm.mean() <= 0.29
    assert 0.25 <= pupils.disadvantaged.mean() <= 0.36
    assert pupils.disadvantaged[pupils.fsm].all()
    assert 0.14 <= pupils.eal.mean() <= 0.28
    assert 0.50 <= (pupils.ethnicity == "WBRI").mean() <= 0.78
    assert set(pupils.ethnicity) <= set(ETHNIC_GROUPS)
    sen = pupils.sen.value_counts(normalize=True)
    assert 0.78 <= sen["N"] <= 0.88 and 0.10 <= sen["K"] <= 0.17 and 0.025 <= sen["E"] <= 0.07
    assert 0.11 <= pupils.idaci.mean() <= 0.17 and pupils.idaci.between(0, 1).all()
    assert 0.03 <= pupils.mobile.mean() <= 0.07 and 0.004 <= pupils.ever_in_care.mean() <= 0.02
    # EAL follows ethnicity; FSM clusters by school.
    assert pupils[pupils.ethnicity == "WBRI"].eal.mean() < 0.02 < 0.5 < pupils[pupils.ethnicity == "ABAN"].eal.mean()
    assert pupils.groupby("school_id").fsm.mean().std() > 0.08
    assert 0.003 <= truth.discountable.mean() <= 0.012


def test_dates_fall_in_the_cohort_windows(tables):
    pupils = tables["pupils"]
    for stage, born_from in (("ks2", YEAR - 11), ("ks4", YEAR - 16)):
        dob = pd.to_datetime(pupils[pupils.key_stage == stage].date_of_birth)
        assert dob.min() >= pd.Timestamp(born_from, 9, 1) and dob.max() <= pd.Timestamp(born_from + 1, 8, 31)
    admitted = pd.to_datetime(pupils.first_admission_date)
    assert (admitted > pd.to_datetime(pupils.date_of_birth) + pd.Timedelta(days=2 * 365)).all()


def test_arrivals_and_discountable_pupils(tables):
    pupils = tables["pupils"].merge(tables["pupil_truth"][["pupil_id", "discountable"]], on="pupil_id")
    assert (pupils.country_english_official.isna() == ~pupils.arrived_from_overseas).all()
    recent = pd.to_datetime(pupils.first_admission_date) >= pd.Timestamp(YEAR - 2, 9, 1)
    rule = pupils.arrived_from_overseas & pupils.eal & (pupils.country_english_official == False) & recent  # noqa: E712
    assert (rule == pupils.discountable).all() and rule.sum() > 0
    # near misses exist: recent arrivals from English-speaking countries
    assert (pupils.arrived_from_overseas & recent & (pupils.country_english_official == True)).any()  # noqa: E712


def _check_test_outcome(score: pd.Series, code: pd.Series) -> None:
    sat = code == "S"
    assert score[sat].notna().all() and score[sat].between(80, 120).all()
    assert score[~sat].isna().all()


def test_scaled_score_present_exactly_when_code_is_s(tables):
    ks2, ks4 = tables["ks2_results"], tables["ks4_results"]
    for subject in ("reading", "maths"):
        _check_test_outcome(ks2[f"{subject}_scaled_score"], ks2[f"{subject}_test_code"])
        has_record = ks4[f"ks2_{subject}_test_code"].notna()
        record = ks4[has_record]
        _check_test_outcome(record[f"ks2_{subject}_scaled_score"], record[f"ks2_{subject}_test_code"])
        assert ks4[f"ks2_{subject}_scaled_score"][~has_record].isna().all()
        below = ks2[f"{subject}_test_code"] == "B"
        assert ks2.loc[below, f"{subject}_ta"].isin(["PKF", "PKE", "PKG", "BLW"]).all()
        blw = ks2[f"{subject}_ta"] == "BLW"
        assert ks2.loc[blw, f"{subject}_pscale"].notna().all() and ks2.loc[~blw, f"{subject}_pscale"].isna().all()
        assert ks2.loc[ks2[f"{subject}_test_code"] == "N", f"{subject}_ta"].isin(["HNM", "EXS"]).all()
    ks1 = ks2[["ks1_reading", "ks1_writing", "ks1_maths"]].isna()
    assert (ks1.all(axis=1) | ~ks1.any(axis=1)).all()  # all three KS1 columns or none


def test_every_awkward_case_appears(tables):
    ks2, ks4, pupils = tables["ks2_results"], tables["ks4_results"], tables["pupils"]
    for subject in ("reading", "maths"):
        assert set(ks2[f"{subject}_test_code"]) == {"S", "N", "B", "A", "D", "M", "U", "Q"}, subject
        assert {"S", "B", "A", "D", "M", "U", "Q"} <= set(ks4[f"ks2_{subject}_test_code"].dropna()), subject
        absent = ks2[ks2[f"{subject}_test_code"] == "A"]
        assert (absent[f"{subject}_ta"] == "HNM").any()  # HNM pupils who did not sit
        assert {"PKF", "PKE", "PKG", "BLW"} <= set(ks2[f"{subject}_ta"].dropna())
    assert {"GDS", "EXS", "WTS", "PKG", "PKE", "PKF", "BLW", "A", "D", "M"} <= set(ks2.writing_ta)
    pscales = set(ks2.reading_pscale.dropna()) | set(ks2.maths_pscale.dropna()) | set(ks2.writing_pscale.dropna())
    assert "NOTSEN" in pscales and any(p.startswith("P") for p in pscales)
    assert set(ks2.ks1_reading.dropna()) == {"PKF", "WTS", "EXS", "GDS"}  # framework era for 2024
    assert 0.02 <= ks2.ks1_reading.isna().mean() <= 0.07
    no_ks2 = ks4[[c for c in ks4.columns if c.startswith("ks2_")]].isna().all(axis=1)
    assert 0.02 <= no_ks2.mean() <= 0.07
    missing_ks1 = ks2.merge(pupils, on="pupil_id").groupby("mobile").ks1_reading.apply(lambda s: s.isna().mean())
    assert missing_ks1[True] > 2 * missing_ks1[False]
    for column in ("science_points", "humanities_points", "languages_points"):
        assert 0.1 <= ks4[column].isna().mean() <= 0.7 and ks4[column].dropna().between(0, 9).all()


def test_attainment8_is_the_weighted_slot_sum_of_the_latent(tables):
    ks4 = tables["ks4_results"].merge(tables["pupil_truth"], on="pupil_id")
    slots = ks4[list(A8_SLOT_COLUMNS)].to_numpy()
    assert ((slots >= 0) & (slots <= 9)).all()
    assert np.allclose(slots, np.round(slots, 2))
    recomputed = slots @ A8_WEIGHTS
    assert np.allclose(recomputed, ks4.attainment8, atol=1e-9)
    latent = ks4.latent_attainment8.to_numpy()
    inside = (latent > 0) & (latent < 90)
    assert inside.mean() > 0.985  # clipping only for the rare pupil
    assert np.abs(recomputed - latent)[inside].max() <= 0.015 + 1e-9
    assert (np.abs(recomputed - latent)[inside] <= 0.005 + 1e-9).mean() > 0.99
    assert np.allclose(recomputed[~inside], np.clip(latent[~inside], 0, 90), atol=0.015)
    assert 38 <= recomputed.mean() <= 54 and 15 <= recomputed.std() <= 24
    assert (slots[:, 2:5] == 0).any()  # unfilled EBacc slots exist


def test_amendments_are_valid(tables):
    amendments, pupils = tables["amendments"], tables["pupils"]
    assert set(amendments.action) == {"remove", "add", "correct"}
    assert amendments.set_index(["pupil_id", "key_stage", "action", "field"]).index.is_unique
    correct = amendments.action == "correct"
    assert amendments.loc[~correct, ["field", "new_value"]].isna().all().all()
    assert amendments.loc[correct, ["field", "new_value"]].notna().all().all()
    keys = ["pupil_id", "key_stage"]
    known = amendments.merge(pupils[keys], on=keys, how="left", indicator=True)
    assert (known._merge == "both").all()
    assert 0.002 <= len(amendments) / len(pupils) <= 0.01
    for row in amendments[correct].itertuples():
        if row.field.endswith("_scaled_score"):
            assert row.key_stage == "ks2" and 80 <= int(row.new_value) <= 120
        elif row.field == "writing_ta":
            assert row.new_value in {"EXS", "GDS"}
        else:
            assert row.key_stage == "ks4" and row.field in A8_SLOT_COLUMNS and 0 <= float(row.new_value) <= 9


def test_trust_membership_spells(tables):
    spells, schools = tables["trust_membership"], tables["schools"]
    assert spells.set_index(["school_id", "join_date"]).index.is_unique
    joined = spells.merge(schools, on="school_id")
    assert len(joined) == len(spells) and (joined.sector == "state_funded").all()
    assert (spells.join_date <= dt.date(YEAR, 8, 31)).all()
    assert (spells.join_date >= dt.date(YEAR - 14, 9, 1)).all()
    assert (spells.join_date >= dt.date(YEAR - 1, 9, 1)).any()  # some joined this academic year
    left = spells.leave_date.notna()
    assert left.any() and (spells.leave_date[left] > spells.join_date[left]).all()
    assert spells[~left].school_id.is_unique  # at most one open spell per school
    in_trust = spells[~left].school_id.nunique() / (schools.sector == "state_funded").sum()
    assert 0.35 <= in_trust <= 0.6


def test_ground_truth_model_and_school_effects(cohort, tables):
    out, _ = cohort
    model = json.loads((out / "ground_truth" / "model.json").read_text())
    assert set(model["models"]) == {"ks2_reading", "ks2_maths", "ks2_average", "ks4_attainment8"}
    groups = [g for g in ETHNIC_GROUPS if g != "WBRI"]
    for name, spec in model["models"].items():
        assert list(spec["coefficients"]) == spec["terms"]
        for term in ("intercept", "prior_aps", "prior_aps_sq", "prior_reading_minus_aps", "female", "sen_support",
                     "sen_plan", "fsm", "eal", "eal_x_prior_aps", "mobile", "age_in_months", "ever_in_care", "idaci",
                     *(f"eth_{g}" for g in groups), *(f"fsm_x_eth_{g}" for g in groups)):
            assert term in spec["terms"], (name, term)
        assert spec["sigma2_school"] > spec["sigma2_trust"] > 0 and spec["sigma2_pupil"] > 0
    a8 = model["models"]["ks4_attainment8"]
    assert "prior_maths_minus_aps" not in a8["terms"] and "school_mean_prior_aps" in a8["terms"]
    assert -7 <= a8["coefficients"]["fsm"] <= -3 and -16 <= a8["coefficients"]["idaci"] <= -10
    effects, schools = tables["school_effects"], tables["schools"]
    assert set(effects.school_id) == set(schools.school_id)
    assert effects.set_index(["school_id", "outcome"]).index.is_unique
    assert (effects.trust_effect.isna() == effects.trust_id.isna()).all()
    a8_effects = effects[effects.outcome == "ks4_attainment8"].school_effect
    assert 1.5 <= a8_effects.std() <= 5.0


def _ks2_points(frame: pd.DataFrame, subject: str) -> np.ndarray:
    nominal = {"PKF": 73, "PKE": 76, "PKG": 79}
    pscale = {"P1": 59, "P2": 59, "P3": 59, "P4": 61, "P5": 63, "P6": 65, "P7": 67, "P8": 69, "NOTSEN": 71}
    code, ta = frame[f"ks2_{subject}_test_code"], frame[f"ks2_{subject}_ta"]
    value = frame[f"ks2_{subject}_scaled_score"].astype(float).where(code == "S")
    value = value.where(code != "N", 79.0)
    value = value.where(~((code == "B") & ta.isin(list(nominal))), ta.map(nominal))
    blw = (code == "B") & (ta == "BLW")
    return value.where(~blw, frame[f"ks2_{subject}_pscale"].map(pscale)).to_numpy(dtype=float)


def test_a8_latent_follows_the_true_model_from_the_input_files(cohort, tables):
    """Rebuild X from the input tables alone; latent - X beta - school effect must be pure noise."""
    out, _ = cohort
    spec = json.loads((out / "ground_truth" / "model.json").read_text())["models"]["ks4_attainment8"]
    frame = (tables["pupils"].merge(tables["ks4_results"], on="pupil_id")
             .merge(tables["pupil_truth"], on=["pupil_id", "key_stage", "school_id"]))
    reading, maths = _ks2_points(frame, "reading"), _ks2_points(frame, "maths")
    observed = ~np.isnan(reading) & ~np.isnan(maths)
    assert (observed == frame.prior_observed.to_numpy()).all()
    frame = frame[observed].assign(prior=((reading + maths) / 2)[observed], reading=reading[observed])
    school = frame.groupby("school_id").prior
    inputs = {
        "prior_aps": frame.prior.to_numpy(), "prior_reading_minus_aps": (frame.reading - frame.prior).to_numpy(),
        "female": (frame.gender == "F").to_numpy(), "sen": frame.sen.map({"N": 0, "K": 1, "E": 2}).to_numpy(),
        "ethnicity": frame.ethnicity.map(ETHNIC_GROUPS.index).to_numpy(), "fsm": frame.fsm.to_numpy(),
        "eal": frame.eal.to_numpy(), "mobile": frame.mobile.to_numpy(), "ever_in_care": frame.ever_in_care.to_numpy(),
        "age_in_months": ((8 - pd.to_datetime(frame.date_of_birth).dt.month) % 12).to_numpy(),
        "idaci": frame.idaci.to_numpy(), "school_mean_prior_aps": school.transform("mean").to_numpy(),
        "school_sd_prior_aps": school.transform(lambda s: s.std(ddof=0)).to_numpy(),
    }
    assert np.allclose(inputs["prior_aps"], frame.prior_aps)
    assert np.allclose(inputs["school_mean_prior_aps"], frame.school_mean_prior_aps)
    assert np.allclose(inputs["school_sd_prior_aps"], frame.school_sd_prior_aps)
    x = design_matrix(tuple(spec["terms"]), inputs)
    beta = np.array([spec["coefficients"][t] for t in spec["terms"]])
    effects = tables["school_effects"].query("outcome == 'ks4_attainment8'").set_index("school_id").school_effect
    residual = frame.latent_attainment8.to_numpy() - x @ beta - frame.school_id.map(effects).to_numpy()
    assert abs(residual.mean()) < 0.3
    assert 0.8 < residual.var() / spec["sigma2_pupil"] < 1.2


def test_same_rows_whatever_the_number_of_files(tmp_path, cohort):
    one = generate_cohort(tmp_path / "one", YEAR, SEED, scale=SCALE, files=1)
    many_out, many = cohort
    assert one["row_counts"] == many["row_counts"]
    for name, table in INPUT_TABLES.items():
        a = _read(tmp_path / "one", name).sort_values(list(table.names)).reset_index(drop=True)
        b = _read(many_out, name).sort_values(list(table.names)).reset_index(drop=True)
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    for name in ("pupil_truth.parquet", "school_effects.parquet"):
        a = pq.read_table(tmp_path / "one" / "ground_truth" / name).to_pandas()
        b = pq.read_table(many_out / "ground_truth" / name).to_pandas()
        pd.testing.assert_frame_equal(a.sort_values(list(a.columns[:3])).reset_index(drop=True),
                                      b.sort_values(list(b.columns[:3])).reset_index(drop=True), check_exact=True)
    model = (tmp_path / "one" / "ground_truth" / "model.json").read_text()
    assert model == (many_out / "ground_truth" / "model.json").read_text()


def test_a_different_seed_gives_different_pupils(tmp_path, tables):
    generate_cohort(tmp_path, YEAR, SEED + 1, scale=SCALE, files=1)
    other = _read(tmp_path, "pupils")
    assert not other.idaci.head(1000).equals(tables["pupils"].idaci.head(1000))


def test_a_tiny_cohort_still_has_every_non_sitting_code(tmp_path):
    manifest = generate_cohort(tmp_path, YEAR, SEED, scale=0.001, files=2)
    assert manifest["row_counts"]["schools"] < 100 and manifest["blocks"] == 1
    for name in PUPIL_LEVEL:  # the second file holds no block: empty, with the contract schema
        parts = sorted((tmp_path / name).glob("part-*.parquet"))
        assert len(parts) == 2 and pq.read_metadata(parts[1]).num_rows == 0
        assert pq.read_schema(parts[1]).equals(INPUT_TABLES[name].arrow_schema(), check_metadata=False)
    ks2, ks4 = _read(tmp_path, "ks2_results"), _read(tmp_path, "ks4_results")
    for subject in ("reading", "maths"):
        assert {"A", "D", "M", "U", "Q"} <= set(ks2[f"{subject}_test_code"]), subject
        assert {"A", "D", "M", "U", "Q"} <= set(ks4[f"ks2_{subject}_test_code"].dropna()), subject
    assert (ks2.writing_ta == "D").any()
    assert _read(tmp_path, "trust_membership").trust_id.nunique() >= 3
