"""The roll-up configuration (conf/rollup/default.yaml): loaded, checked, errors named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from valueadded.config import REPO_CONF_DIR, ConfigError, load_release_config
from valueadded.rollup.config import DIMENSIONS, load_rollup_config
from valueadded.rollup.measures import MEASURES

DEFAULT = REPO_CONF_DIR / "rollup" / "default.yaml"
CODES = load_release_config().codes


def _load(tmp_path: Path, content: dict):
    path = tmp_path / "rollup.yaml"
    path.write_text(yaml.safe_dump(content))
    return load_rollup_config(path, CODES.key_stages, CODES.ethnicities)


def _default() -> dict:
    return yaml.safe_load(DEFAULT.read_text())


def test_default_configuration_is_the_documented_rules():
    config = load_release_config().rollup
    assert config.min_pupils == 6
    assert (config.trusts.min_full_years, config.trusts.min_schools) == (3, 3)
    assert config.trusts.time_in_trust_weights == ((3, 3.0), (4, 4.0))
    assert config.subgroups.dimensions == DIMENSIONS
    assert config.subgroups.measures["ks4"] == ("progress_8", "progress_english", "progress_maths", "attainment_8", "cva")


def test_all_measures_can_be_broken_down(tmp_path):
    content = _default()
    content["subgroups"]["measures"] = {"ks2": "all", "ks4": "all"}
    config = _load(tmp_path, content)
    assert config.subgroups.measures == {ks: tuple(m.name for m in MEASURES[ks]) for ks in ("ks2", "ks4")}
    assert (config.identification.lowest_percent, config.identification.exit_above_percent) == (10.0, 20.0)
    assert config.identification.subgroups["disadvantaged"] == ("yes",)  # YAML's yes is a string here
    assert config.history_data_stage == "validated"
    assert '"min_pupils": 6' in load_release_config().to_json()  # recorded with every run


def test_every_key_stage_measure_is_catalogued():
    from valueadded.measures import ks2, ks4_tables
    from valueadded.rollup import measures

    assert measures.KS4_SUBJECTS == ks4_tables.KS4_SUBJECTS
    assert measures.KS2_PROGRESS_SUBJECTS == ks2.SUBJECTS
    assert {m.name for m in MEASURES["ks2"]} >= {"progress_reading", "pct_expected_rwm", "average_scaled_score_maths", "cva"}
    assert {m.name for m in MEASURES["ks4"]} >= {"progress_8", "progress_ebacc_science", "attainment_8", "cva"}


def _set(path: str, value):
    def change(content: dict) -> None:
        *parents, last = path.split(".")
        node = content
        for key in parents:
            node = node[key]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
    return change


@pytest.mark.parametrize(
    "change, message",
    [
        (_set("typo", 1), r"unknown key\(s\) \['typo'\]"),
        (_set("suppression.min_pupils", KeyError), r"missing key\(s\) \['min_pupils'\]"),
        (_set("suppression.min_pupils", 0), "suppression.min_pupils must be an integer of at least 1"),
        (_set("trusts.time_in_trust_weights", {4: 4}), "must start at min_full_years"),
        (_set("trusts.time_in_trust_weights", {3: -1}), "must be positive"),
        (_set("subgroups.dimensions", ["disadvantaged", "shoe_size"]), "subgroups.dimensions must be distinct names"),
        (_set("subgroups.ethnic_groups.white", ["WBRI", "WIRI"]), r"missing \['WIRT', 'WOTH', 'WROM'\]"),
        (_set("subgroups.ethnic_groups.other", ["OOTH", "WBRI"]), "code WBRI is in both (white and other|other and white)"),
        (_set("subgroups.ethnic_groups.other", ["OOTH", "XXXX"]), "XXXX is not an ethnicity code"),
        (_set("subgroups.prior_attainment_bands.ks4", {"middle": 110, "high": 100}), "must be strictly increasing"),
        (_set("subgroups.prior_attainment_bands", {"ks2": {"middle": 8, "high": 9.5}}), "must give exactly the key stages"),
        (_set("subgroups.measures.ks2", ["progress_reading", "attainment_8"]), "'attainment_8' is not a progress/attainment/cva measure of ks2"),
        (_set("subgroups.measures.ks4", ["attainment_8"]), r"identification.measure.ks4 \(progress_8\) must be one of subgroups.measures.ks4"),
        (_set("identification.measure.ks4", "progress_9"), "'progress_9' is not a progress/attainment/cva measure of ks4"),
        (_set("identification.min_pupils", 5), r"identification.min_pupils \(5\) must be at least suppression.min_pupils \(6\)"),
        (_set("identification.lowest_percent", 30), "lowest_percent <= exit_above_percent"),
        (_set("identification.subgroups", {"sen": ["none", "mild"]}), r"\['mild'\] not among"),
        (_set("identification.subgroups", {"shoe_size": ["big"]}), "is not one of subgroups.dimensions"),
        (_set("comparisons.quadrants.ks2", {"pct_expected_rwm": "progress_maths"}), "is not a progress/cva measure of ks2"),
        (_set("comparisons.similar_schools.cohort_size_lower_bounds.ks2", [5, 10]), "must start at 1"),
        (_set("comparisons.similar_schools.disadvantaged_percent_lower_bounds", [0, 20, 10]), "must be strictly increasing"),
        (_set("trends.history_data_stage", "final"), "history_data_stage must be one of"),
    ],
)
def test_bad_rollup_configuration_is_named(tmp_path, change, message):
    content = _default()
    change(content)
    with pytest.raises(ConfigError, match=message) as caught:
        _load(tmp_path, content)
    assert str(tmp_path / "rollup.yaml") in str(caught.value)


def test_release_configuration_names_the_rollup_file(tmp_path):
    release = yaml.safe_load((REPO_CONF_DIR / "releases" / "default.yaml").read_text())
    release["reference"] = str(REPO_CONF_DIR / "reference" / "codes.yaml")
    release["rollup"] = "nowhere.yaml"
    path = tmp_path / "release.yaml"
    path.write_text(yaml.safe_dump(release))
    with pytest.raises(ConfigError, match="nowhere.yaml: configuration file not found"):
        load_release_config(path)
