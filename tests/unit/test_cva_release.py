"""The CVA stage inside a whole release, on a small generated cohort, through the command line.

Both key stages, unvalidated data of the shared generated release (tests/conftest.py: scale
0.02, seed 7, ~12,000 pupils per key stage). Checks
that cva_model, the CVA columns of pupil_results and the "cva" rows of school_measures are
written and agree with each other, and that every pupil is still accounted for.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from deltalake import DeltaTable
from pyspark.sql import functions as F

from valueadded.cli import main
from valueadded.cva.spec import load_model_spec

YEAR, DATA_STAGE = 2024, "unvalidated"
CENTRE = {"ks2": 100.0, "ks4": 1000.0}
MAINSTREAM = {"ks2": "ks2_mainstream", "ks4": "ks4_mainstream"}

pytestmark = pytest.mark.slow  # reads the shared generated release (30-90 s to build, once per run)


@pytest.fixture(scope="module")
def released(generated_release):
    """The unvalidated partitions of the shared release of the generated cohort (tests/conftest.py)."""
    assert generated_release.year == YEAR

    def table(audience, name):
        frame = DeltaTable(str(generated_release.output_dir / audience / name)).to_pandas()
        return frame[frame.data_stage == DATA_STAGE].reset_index(drop=True)

    return {
        "root": generated_release.root,
        "runs": table("restricted", "runs"),
        "pupils": table("restricted", "pupil_results"),
        "models": table("published", "cva_model"),
        # The school CVA figures as computed, small schools included (school_measures withholds them).
        "schools": table("restricted", "school_scores"),
    }


@pytest.mark.parametrize("key_stage", ["ks2", "ks4"])
def test_every_pupil_still_accounted_for(released, key_stage):
    (run,) = released["runs"][released["runs"].key_stage == key_stage].itertuples()
    assert run.status == "succeeded"
    counts = json.loads(run.row_counts_json)
    assert all(check["holds"] for check in counts["reconciliation"].values())
    pupils = released["pupils"][released["pupils"].key_stage == key_stage]
    assert counts["cva"]["rows_in"] == counts["cva"]["rows_out"] == len(pupils) == counts["pupil_results"]["rows"]
    assert pupils.pupil_id.is_unique
    in_model = pupils.cva_model.notna()
    assert (in_model == pupils.cva_exclusion_reason.isna()).all()  # in a model, or a reason: never neither
    fitted = {name: info["pupils"] for name, info in counts["cva"]["models"].items() if info["status"] == "fitted"}
    assert pupils[in_model].cva_model.value_counts().to_dict() == fitted


@pytest.mark.parametrize("key_stage", ["ks2", "ks4"])
def test_pupil_predictions_add_up(released, key_stage):
    pupils = released["pupils"][released["pupils"].key_stage == key_stage]
    model = pupils[pupils.cva_model.notna()]
    assert len(model) > 5000
    parts = model.cva_prior_attainment + model.cva_characteristics + model.cva_school_level + model.cva_range_adjustment
    np.testing.assert_allclose(model.cva_prediction, parts, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(model.cva_residual, model.cva_outcome - model.cva_prediction, rtol=1e-12, atol=1e-9)
    spec = load_model_spec(f"{MAINSTREAM[key_stage]}.yaml")
    low, high = spec.outcome.valid_range
    assert model.cva_prediction.between(low, high).all()
    assert model.included.all() and (model.school_sector == "state_funded").all()
    assert set(model.cva_model) <= {MAINSTREAM[key_stage], "special"}
    assert (model[model.cva_model == "special"].school_provision == "special").all()
    assert (model[model.cva_model == MAINSTREAM[key_stage]].school_provision == "mainstream").all()
    mainstream = model[model.cva_model == MAINSTREAM[key_stage]]
    assert (model[model.cva_model == "special"].cva_school_level == 0).all()  # no school-level terms
    if key_stage == "ks2":
        assert (mainstream.cva_school_level == 0).all()  # none in the KS1-2 model either
    else:
        assert (mainstream.cva_school_level != 0).all()
    # Mean pupil CVA is about 0 in the national model (the intercept absorbs the mean).
    assert abs(mainstream.cva_residual.mean()) < 0.05 * mainstream.cva_residual.std()

    rest = pupils[pupils.cva_model.isna()]
    assert rest[["cva_prediction", "cva_prior_attainment", "cva_residual"]].isna().all().all()
    excluded = rest[~rest.included]
    assert (excluded.cva_exclusion_reason == excluded.exclusion_reason).all()
    no_prior = rest[rest.cva_exclusion_reason == "no_prior_attainment"]
    assert len(no_prior) > 0 and no_prior.included.all()


@pytest.mark.parametrize("key_stage", ["ks2", "ks4"])
def test_school_cva_is_the_shrunken_mean_pupil_cva(released, key_stage):
    pupils = released["pupils"][(released["pupils"].key_stage == key_stage) & released["pupils"].cva_model.notna()]
    models = released["models"][(released["models"].key_stage == key_stage) & (released["models"].status == "fitted")]
    schools = released["schools"][(released["schools"].key_stage == key_stage)]
    assert len(set(schools.measure) - {"cva"}) > 0  # the key stage's own measures are still there
    cva = schools[schools.measure == "cva"].set_index("school_id")
    assert cva.band.isna().all() and cva.index.is_unique
    assert set(cva.index) == set(pupils.school_id)
    variances = models.groupby("model")[["sigma2_school", "sigma2_pupil"]].first()
    model_of_school = pupils.groupby("school_id").cva_model.first()
    by_school = pupils.groupby("school_id").cva_residual.agg(["size", "mean"]).loc[cva.index]
    s2b = variances.sigma2_school.loc[model_of_school.loc[cva.index]].to_numpy()
    s2e = variances.sigma2_pupil.loc[model_of_school.loc[cva.index]].to_numpy()
    n = by_school["size"].to_numpy()
    k = s2b / (s2b + s2e / n)
    np.testing.assert_array_equal(cva.n.to_numpy(), n)
    np.testing.assert_allclose(cva.score - CENTRE[key_stage], k * by_school["mean"], rtol=1e-9, atol=1e-9)
    half = 1.959963984540054 * np.sqrt(s2b * s2e / (s2e + n * s2b))
    np.testing.assert_allclose(cva.upper - cva.score, half, rtol=1e-9)
    np.testing.assert_allclose(cva.score - cva.lower, half, rtol=1e-9)


@pytest.mark.parametrize("key_stage", ["ks2", "ks4"])
def test_cva_model_table(released, key_stage):
    models = released["models"][released["models"].key_stage == key_stage]
    assert set(models.model) == {MAINSTREAM[key_stage], "special"}
    main_rows = models[models.model == MAINSTREAM[key_stage]]
    spec = load_model_spec(f"{MAINSTREAM[key_stage]}.yaml")
    assert sorted(main_rows.term) == sorted(spec.term_names)
    assert (main_rows.status == "fitted").all() and main_rows.converged.all() and (~main_rows.boundary).all()
    assert (main_rows.std_error > 0).all() and main_rows.message.isna().all()
    assert main_rows[["sigma2_school", "sigma2_pupil", "reml_criterion", "n_pupils", "n_schools"]].nunique().eq(1).all()
    assert (main_rows.sigma2_school > 0).all() and (main_rows.gather_seconds > 0).all()
    assert dict(zip(main_rows.term, main_rows.term_stage)) == spec.stage_of
    assert main_rows.set_index("term").term_mean["intercept"] == 1.0
    assert (main_rows.spec_file == f"models/{MAINSTREAM[key_stage]}.yaml").all()


def test_special_model_reported_when_a_merged_group_has_no_pupils(released):
    """At this tiny scale no pupil of the KS2 special schools' model population is
    Unclassified, so the special model's eth_unclassified column is all zero: the model is
    reported as not fitted (its spec says when_not_estimable: report) and its pupils get
    model_not_fitted. (Were there such a pupil, the model would have to be fitted.)"""
    pupils = released["pupils"]
    special = pupils[(pupils.key_stage == "ks2") & (pupils.school_provision == "special")]
    population = special[(special.cva_model == "special") | (special.cva_exclusion_reason == "model_not_fitted")]
    assert len(population) > 0
    (row,) = released["models"][(released["models"].key_stage == "ks2") & (released["models"].model == "special")
                                 & (released["models"].term.isna() | (released["models"].term == "intercept"))].itertuples()
    if (population.ethnicity == "UNCL").any():
        assert row.status == "fitted"
        return
    assert row.status == "not_fitted" and row.term is None and pd.isna(row.estimate)
    assert "SingularDesignError" in row.message and "eth_unclassified" in row.message
    assert row.n_pupils == len(population) and row.n_schools == population.school_id.nunique()
    assert (population.cva_exclusion_reason == "model_not_fitted").all() and population.cva_model.isna().all()
    cva_schools = released["schools"][released["schools"].measure == "cva"].school_id
    assert not cva_schools.isin(set(population.school_id)).any()


def test_singular_mainstream_model_stops_the_release_naming_the_term(released, tmp_path, monkeypatch):
    """A model variant with a term no pupil has (ever in care x Traveller of Irish heritage,
    in a ~12,000-pupil cohort) stops the run: exit code 2, and the run log names the term."""
    from valueadded.cva import stage
    from valueadded.cva.spec import MODELS_DIR

    content = yaml.safe_load((MODELS_DIR / "ks4_mainstream.yaml").read_text())
    content["interactions"].append(["ever_in_care", "eth_WIRT"])
    variant = tmp_path / "ks4_variant.yaml"
    variant.write_text(yaml.safe_dump(content))
    pupils = released["pupils"]
    assert not ((pupils.key_stage == "ks4") & pupils.ever_in_care & (pupils.ethnicity == "WIRT")).any()
    monkeypatch.setitem(stage.MODEL_FILES, "ks4", (str(variant), "special.yaml"))
    output = tmp_path / "output"
    code = main(["release", "--input", str(released["root"] / "input"), "--output", str(output), "--year", str(YEAR),
                 "--key-stage", "ks4", "--stage", DATA_STAGE])
    assert code == 2
    (run,) = DeltaTable(str(output / "restricted" / "runs")).to_pandas().itertuples()
    assert run.status == "failed"
    assert "SingularDesignError" in run.error and "ever_in_care_x_eth_WIRT" in run.error and "ks4_mainstream" in run.error
    assert not (output / "published" / "cva_model").exists()  # nothing published by a failed run

    # Dropping the empty term instead fits exactly the shipped model: every prediction and
    # coefficient equals the shared release's, and cva_model lists the term with no estimate.
    code = main(["release", "--input", str(released["root"] / "input"), "--output", str(output), "--year", str(YEAR),
                 "--key-stage", "ks4", "--stage", DATA_STAGE, "--cva-empty-terms", "drop"])
    assert code == 0
    models = DeltaTable(str(output / "published" / "cva_model")).to_pandas()
    main_rows = models[models.model == "ks4_mainstream"].set_index("term")
    assert main_rows.status.eq("fitted").all() and main_rows.message.str.contains("ever_in_care_x_eth_WIRT").all()
    assert pd.isna(main_rows.estimate["ever_in_care_x_eth_WIRT"]) and pd.isna(main_rows.std_error["ever_in_care_x_eth_WIRT"])
    shipped = released["models"][(released["models"].key_stage == "ks4") & (released["models"].model == "ks4_mainstream")]
    shipped = shipped.set_index("term").estimate
    np.testing.assert_allclose(main_rows.estimate.loc[shipped.index], shipped, rtol=1e-9, atol=1e-12)
    again = DeltaTable(str(output / "restricted" / "pupil_results")).to_pandas().set_index("pupil_id")
    before = pupils[pupils.key_stage == "ks4"].set_index("pupil_id")
    assert len(again) == len(before)
    np.testing.assert_allclose(again.cva_prediction.loc[before.index], before.cva_prediction, rtol=1e-9, atol=1e-9)


def test_ks2_cva_gather_runs_compiled_code(spark, released, tmp_path, monkeypatch):
    """The frame each KS2 model's gather hands to Python gets generated code the JVM compiles.

    HotSpot never compiles a method over 8,000 bytes of bytecode: it runs interpreted, for
    every pupil. With prior attainment looked up through chains of CASE WHEN branches, the
    mainstream model's gather came to 10,849 bytes. The size depends on the expressions,
    not on the rows, so the small cohort shows it.
    """
    from support.codegen import JVM_HUGE_METHOD_LIMIT, largest_generated_method
    from valueadded.cva import stage

    sizes: list[int] = []
    gathering: list[bool] = []
    frame_class = type(spark.range(1))  # the session's DataFrame class (pyspark's classic one)
    gather, map_in_arrow = stage.gather_statistics, frame_class.mapInArrow

    def measured_gather(*args, **kwargs):
        gathering.append(True)
        try:
            return gather(*args, **kwargs)
        finally:
            gathering.pop()

    def measured_map(frame, *args, **kwargs):
        if gathering:
            sizes.append(largest_generated_method(frame))
        return map_in_arrow(frame, *args, **kwargs)

    monkeypatch.setattr(stage, "gather_statistics", measured_gather)
    monkeypatch.setattr(frame_class, "mapInArrow", measured_map)
    code = main(["release", "--input", str(released["root"] / "input"), "--output", str(tmp_path / "output"),
                 "--year", str(YEAR), "--key-stage", "ks2", "--stage", DATA_STAGE])
    assert code == 0
    assert len(sizes) == 2  # the mainstream and the special schools model
    assert max(sizes) <= JVM_HUGE_METHOD_LIMIT, sizes


@pytest.mark.parametrize("key_stage", ["ks2", "ks4"])
def test_cva_pupil_rows_run_compiled_code_on_balanced_partitions(spark, released, key_stage, tmp_path, monkeypatch):
    """The frame the CVA stage materialises (every pupil with the CVA columns) gets generated
    code the JVM compiles, and keeps the pupils' partitions.

    One method per model over the whole pupil row, prior attainment, outcome, design and
    prediction came to 13,189 bytes for KS2 (22,419 for KS4) with a branch per ethnicity
    level and interaction: interpreted, for every pupil. And a union of the models' wide
    parts came out of materialise() as one partition of 640,522 pupils and one of 20,253.
    """
    from support.codegen import JVM_HUGE_METHOD_LIMIT, generated_method_sizes
    from valueadded.cva import stage

    sizes: list[list[int]] = []
    partitions: list[tuple[list[int], list[int]]] = []
    materialise, check_rows = stage.materialise, stage._check_rows

    def measured_materialise(frame):
        sizes.append(generated_method_sizes(frame))
        return materialise(frame)

    def pupils_per_partition(frame):
        return sorted(row["count"] for row in frame.groupBy(F.spark_partition_id()).count().collect())

    def measured_check_rows(release, pupils, enriched, outcomes):
        partitions.append((pupils_per_partition(pupils), pupils_per_partition(enriched)))
        return check_rows(release, pupils, enriched, outcomes)

    monkeypatch.setattr(stage, "materialise", measured_materialise)
    monkeypatch.setattr(stage, "_check_rows", measured_check_rows)
    code = main(["release", "--input", str(released["root"] / "input"), "--output", str(tmp_path / "output"),
                 "--year", str(YEAR), "--key-stage", key_stage, "--stage", DATA_STAGE])
    assert code == 0
    [sizes] = sizes
    assert sizes and max(sizes) <= JVM_HUGE_METHOD_LIMIT, sizes
    [(before, after)] = partitions
    assert after == before
