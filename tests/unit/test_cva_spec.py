"""CVA model specifications (conf/models/*.yaml): what ships, and the errors a bad file gives. No Spark."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from valueadded.config import ConfigError
from valueadded.cva.spec import MODELS_DIR, load_model_spec
from valueadded.synth.truth import build_model

ETHNIC_CODES = ["WBRI", "WIRI", "WIRT", "WOTH", "WROM", "MWBC", "MWBA", "MWAS", "MOTH", "AIND", "APKN", "ABAN",
                "AOTH", "BCRB", "BAFR", "BOTH", "CHNE", "OOTH", "UNCL"]


def test_ks4_mainstream_is_the_full_ks2_4_model():
    spec = load_model_spec("ks4_mainstream.yaml")
    assert spec.key_stage == "ks4" and spec.population == "mainstream" and spec.when_not_estimable == "stop"
    assert len(spec.terms) >= 50
    assert spec.outcome.measure == "attainment8" and spec.outcome.valid_range == (0.0, 90.0)
    assert spec.outcome.school_score_centre == 1000
    names = spec.term_names
    assert names[:4] == ("intercept", "prior_aps", "prior_aps_sq", "prior_reading_minus_aps")
    assert [n for n in names if n.startswith("eth_")] == [f"eth_{c}" for c in ETHNIC_CODES[1:]]  # 19 groups
    assert [n for n in names if n.startswith("fsm_x_eth_")] == [f"fsm_x_eth_{c}" for c in ETHNIC_CODES[1:]]
    assert "eal_x_prior_aps" in names
    assert names[-2:] == ("school_mean_prior_aps", "school_sd_prior_aps")
    stage = spec.stage_of
    assert stage["intercept"] == stage["prior_reading_minus_aps"] == "prior_attainment"
    assert stage["fsm_x_eth_CHNE"] == stage["idaci"] == stage["female"] == "characteristics"
    assert stage["school_sd_prior_aps"] == "school_level"


@pytest.mark.parametrize("file, outcome, prior_scale", [
    ("ks4_mainstream.yaml", "ks4_attainment8", "ks2_scaled"),
    ("ks2_mainstream.yaml", "ks2_reading", "ks1_framework"),
])
def test_mainstream_terms_are_the_generators_true_model_terms(file, outcome, prior_scale):
    # The generated cohort's outcomes come from exactly these terms (synth/truth.py), so
    # recovery tests compare term by term.
    spec = load_model_spec(file)
    assert set(spec.term_names) == set(build_model(outcome, prior_scale).terms)


def test_ks2_mainstream_has_no_school_level_terms_and_two_subject_differences():
    spec = load_model_spec("ks2_mainstream.yaml")
    assert spec.school_terms == ()
    assert spec.prior.subject_differences == ("reading", "maths")
    assert spec.prior.points["EXS"] == 8 and spec.prior.points["2B"] == 15 and spec.prior.points["4+"] == 27
    assert spec.outcome.nominal_scores.sat_without_scaled_score == 79
    assert spec.outcome.nominal_scores.sat_without_scaled_score_ta == ("HNM", "EXS")
    assert spec.outcome.school_score_centre == 100


@pytest.mark.parametrize("key_stage, mainstream", [("ks2", "ks2_mainstream.yaml"), ("ks4", "ks4_mainstream.yaml")])
def test_special_model_is_the_simplified_mainstream_model(key_stage, mainstream):
    special, main = load_model_spec("special.yaml", key_stage), load_model_spec(mainstream)
    assert special.key_stage == key_stage and special.population == "special"
    assert special.outcome == main.outcome and special.prior == main.prior  # inherited
    assert special.interactions == () and special.school_terms == ()
    ethnicity = {c.name: c for c in special.categorical}["ethnicity"]
    assert len(ethnicity.levels) + 1 == 8  # 8 merged groups, White British the reference
    merged = sorted(c for _, codes in ethnicity.levels for c in codes) + list(ethnicity.reference)
    assert sorted(merged) == sorted(ETHNIC_CODES)
    assert dict(ethnicity.levels)["eth_gypsy_roma_traveller"] == ("WIRT", "WROM")
    assert not any("_x_" in t for t in special.term_names)
    assert "fsm" in special.term_names and "eal" in special.term_names


def _write(tmp_path: Path, name: str, content: dict) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


@pytest.fixture
def ks4_content():
    return yaml.safe_load((MODELS_DIR / "ks4_mainstream.yaml").read_text())


@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(colour="red"), r"unknown key\(s\) \['colour'\]"),
    (lambda c: c.pop("school_terms"), r"missing key\(s\) \['school_terms'\]"),
    (lambda c: c["outcome"].update(extra=1), r"outcome: unknown key\(s\) \['extra'\]"),
    (lambda c: c["prior_attainment"]["nominal_scores"].pop("pre_key_stage"), r"nominal_scores: missing key"),
    (lambda c: c["prior_attainment"]["nominal_scores"].pop("sat_no_scaled_score_ta"), r"nominal_scores: missing key"),
    (lambda c: c["prior_attainment"]["nominal_scores"].update(sat_no_scaled_score_ta=["HNM", "XYZ"]), r"unknown code\(s\) \['XYZ'\]"),
    (lambda c: c["categorical"][2]["levels"].update(eth_XXXX=["XXXX"]), r"unknown ethnicity code\(s\) \['XXXX'\]"),
    (lambda c: c["categorical"][2]["levels"].pop("eth_UNCL"), r"\['UNCL'\] are neither the reference nor in a level"),
    (lambda c: c["categorical"][1]["levels"].update(sen_plan=["E", "K"]), r"\['K'\] assigned more than once"),
    (lambda c: c["pupil_terms"].append("female"), r"term\(s\) \['female'\] defined more than once"),
    (lambda c: c["interactions"].append(["fsm", "religion"]), r"'religion' is not a prior attainment term"),
    (lambda c: c["school_terms"].append("school_mean_idaci"), r"school_terms: unknown \['school_mean_idaci'\]"),
    (lambda c: c["outcome"].update(valid_range=[90, 0]), r"low < high"),
    (lambda c: c["prior_attainment"].update(subject_differences=["reading", "maths"]), r"at most 1 of the 2 subjects"),
    (lambda c: c.update(when_not_estimable="ignore"), r"when_not_estimable must be one of"),
    (lambda c: c["prior_attainment"].update(measure="ks3_levels"), r"prior_attainment.measure must be one of"),
])
def test_bad_specifications_are_errors_naming_the_file(tmp_path, ks4_content, change, message):
    change(ks4_content)
    path = _write(tmp_path, "variant.yaml", ks4_content)
    with pytest.raises(ConfigError, match=message) as info:
        load_model_spec(path)
    assert str(path) in str(info.value)


def test_a_variant_model_is_just_another_file(tmp_path, ks4_content):
    ks4_content["name"] = "ks4_no_interactions"
    ks4_content["interactions"] = []
    ks4_content["school_terms"] = ["school_mean_prior_aps"]
    spec = load_model_spec(_write(tmp_path, "variant.yaml", ks4_content))
    assert spec.name == "ks4_no_interactions"
    assert len(spec.terms) == 52 - 19 - 1
    assert spec.term_names[-1] == "school_mean_prior_aps"


def test_inheriting_file_needs_a_key_stage_it_knows(tmp_path):
    with pytest.raises(ConfigError, match="load it for one of"):
        load_model_spec("special.yaml")
    content = yaml.safe_load((MODELS_DIR / "special.yaml").read_text())
    content["inherit"] = {"ks4": str(MODELS_DIR / "ks4_mainstream.yaml")}
    path = _write(tmp_path, "special_ks4_only.yaml", content)
    assert load_model_spec(path, "ks4").key_stage == "ks4"
    with pytest.raises(ConfigError, match="no model for key stage 'ks2'"):
        load_model_spec(path, "ks2")
    with pytest.raises(ConfigError, match="is a 'ks4' model, not 'ks2'"):
        load_model_spec("ks4_mainstream.yaml", "ks2")
