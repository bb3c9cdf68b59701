"""Every input rule, each broken by a row made for it.

Row rules run in a few intakes over one input set that holds every bad row at once,
each on its own pupil or school, so each rule is checked against a row that breaks
only it (plus the partner rows it drags along, which are checked too). Structural
faults each get their own input, since they stop the run.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from support.inputs import YEAR, add_ks2_pupil, add_ks4_pupil, valid_tables, write_inputs
from valueadded.config import ConfigError, load_release_config
from valueadded.io.inputs import StructuralInputError
from valueadded.io.intake import ValidationThresholdError, check_rejected_share, run_intake

CODES = load_release_config().codes

# (case, table to break, what is done) -> expected rejected rows: (source_table, id, reason_code)
KS2_ROW_FAULTS = [
    ("scaled score above 120", dict(results={"reading_scaled_score": 130}), [("ks2_results", "R01", "out_of_range.reading_scaled_score"), ("pupils", "R01", "results_row_rejected")]),
    ("unknown test code", dict(results={"reading_test_code": "Z"}), [("ks2_results", "R02", "unknown_code.reading_test_code"), ("pupils", "R02", "results_row_rejected")]),
    ("score with an absence code", dict(results={"maths_test_code": "A"}), [("ks2_results", "R03", "inconsistent.maths_scaled_score"), ("pupils", "R03", "results_row_rejected")]),
    ("code S without a score", dict(results={"maths_scaled_score": None}), [("ks2_results", "R04", "inconsistent.maths_scaled_score"), ("pupils", "R04", "results_row_rejected")]),
    ("unknown KS1 code", dict(results={"ks1_reading": "5C"}), [("ks2_results", "R05", "unknown_code.ks1_reading"), ("pupils", "R05", "results_row_rejected")]),
    ("unknown writing TA", dict(results={"writing_ta": "XYZ"}), [("ks2_results", "R06", "unknown_code.writing_ta"), ("pupils", "R06", "results_row_rejected")]),
    ("unknown school", dict(school="999999"), [("pupils", "R07", "unknown_school"), ("ks2_results", "R07", "pupil_row_rejected")]),
    ("impossible date of birth", dict(pupil={"date_of_birth": date(1990, 1, 1)}), [("pupils", "R08", "impossible_date.date_of_birth"), ("ks2_results", "R08", "pupil_row_rejected")]),
    ("admitted before birth", dict(pupil={"first_admission_date": date(2000, 1, 1)}), [("pupils", "R09", "impossible_date.first_admission_date"), ("ks2_results", "R09", "pupil_row_rejected")]),
    ("IDACI below 0", dict(pupil={"idaci": -0.1}), [("pupils", "R10", "out_of_range.idaci"), ("ks2_results", "R10", "pupil_row_rejected")]),
    ("IDACI above 1", dict(pupil={"idaci": 1.2}), [("pupils", "R11", "out_of_range.idaci"), ("ks2_results", "R11", "pupil_row_rejected")]),
    ("unknown ethnicity", dict(pupil={"ethnicity": "XXXX"}), [("pupils", "R12", "unknown_code.ethnicity"), ("ks2_results", "R12", "pupil_row_rejected")]),
    ("unknown gender", dict(pupil={"gender": "X"}), [("pupils", "R13", "unknown_code.gender"), ("ks2_results", "R13", "pupil_row_rejected")]),
    ("missing SEN", dict(pupil={"sen": None}), [("pupils", "R14", "missing_value.sen"), ("ks2_results", "R14", "pupil_row_rejected")]),
    ("unknown p-scale", dict(results={"writing_ta": "BLW", "writing_pscale": "P9"}), [("ks2_results", "R15", "unknown_code.writing_pscale"), ("pupils", "R15", "results_row_rejected")]),
]


def _ks2_faulty_tables() -> dict:
    tables = valid_tables()
    for index, (_, fault, _) in enumerate(KS2_ROW_FAULTS, start=1):
        add_ks2_pupil(tables, f"R{index:02d}", fault.get("school", "100001"), fault.get("pupil"), fault.get("results"))
    # Cross-table and key faults.
    add_ks2_pupil(tables, "DUPRES")
    tables["ks2_results"].append(dict(tables["ks2_results"][-1]))  # the same pupil's results twice
    add_ks2_pupil(tables, "DUPPUP")
    tables["pupils"].append(dict(tables["pupils"][-1]))  # the same pupil twice
    add_ks2_pupil(tables, "NORES")
    tables["ks2_results"].pop()  # pupil without a results row
    add_ks2_pupil(tables, "NOPUP")
    tables["pupils"].pop()  # results row without a pupil
    # Schools and trusts.
    tables["schools"] += [{**tables["schools"][0], "school_id": "100008"}] * 2  # the same school twice
    tables["schools"].append({**tables["schools"][0], "school_id": "100009", "phase": "nursery"})
    trust = tables["trust_membership"][0]
    tables["trust_membership"] += [
        {**trust, "school_id": "999998"},  # unknown school
        {**trust, "school_id": "200001", "join_date": date(2020, 1, 1), "leave_date": date(2019, 1, 1)},  # leaves before joining
        {**trust, "school_id": "100001", "trust_id": "T2", "join_date": date(2018, 9, 1)},  # overlaps the 2015 spell
    ]
    # Amendments.
    correction = tables["amendments"][0]
    tables["amendments"] += [
        {**correction, "pupil_id": "P2006", "field": None},  # correct without a field
        {**correction, "pupil_id": "P2005", "field": "school_id"},  # not a correctable field
        {**correction, "pupil_id": "P2004", "new_value": "abc"},  # not an int
        {**correction, "pupil_id": "NOBODY"},  # unknown pupil
        {**correction, "pupil_id": "P2003", "action": "delete", "field": None, "new_value": None},  # unknown action
        {**correction, "pupil_id": "P2001", "new_value": "150"},  # valid amendment, out-of-range result
    ]
    return tables


KS2_CROSS_FAULTS = [
    ("ks2_results", "DUPRES", "duplicate_key"),
    ("pupils", "DUPRES", "results_row_rejected"),
    ("pupils", "DUPPUP", "duplicate_key"),
    ("ks2_results", "DUPPUP", "pupil_row_rejected"),
    ("pupils", "NORES", "no_results_row"),
    ("ks2_results", "NOPUP", "unknown_pupil"),
]
KS2_SCHOOL_FAULTS = [
    ("schools", "100008", "duplicate_key"),
    ("schools", "100009", "unknown_code.phase"),
    ("trust_membership", "999998", "unknown_school"),
    ("trust_membership", "200001", "leave_before_join"),
    ("trust_membership", "100001", "overlapping_trust_spells"),
]
KS2_AMENDMENT_FAULTS = [
    ("amendments", "P2006", "incomplete_correction"),
    ("amendments", "P2005", "unknown_field"),
    ("amendments", "P2004", "invalid_new_value"),
    ("amendments", "NOBODY", "unknown_pupil"),
    ("amendments", "P2003", "unknown_code.action"),
]


def _rejected(spark, folder: Path, key_stage: str, data_stage: str):
    intake = run_intake(spark, folder, YEAR, key_stage, data_stage, CODES)
    rows = intake.rejected.toPandas()
    rows["id"] = rows["pupil_id"].where(rows["pupil_id"].notna(), rows["school_id"])
    return intake, rows


@pytest.fixture(scope="module")
def ks2_validated(spark, tmp_path_factory):
    folder = write_inputs(tmp_path_factory.mktemp("ks2_faults"), _ks2_faulty_tables())
    return _rejected(spark, folder, "ks2", "validated")


@pytest.mark.parametrize("case, fault, expected", KS2_ROW_FAULTS, ids=[c[0] for c in KS2_ROW_FAULTS])
def test_ks2_row_fault_is_rejected_with_its_reason(ks2_validated, case, fault, expected):
    _, rows = ks2_validated
    for source_table, row_id, reason in expected:
        match = rows[(rows.source_table == source_table) & (rows.id == row_id)]
        assert list(match.reason_code) == [reason], f"{case}: {source_table} {row_id}"


@pytest.mark.parametrize("source_table, row_id, reason", KS2_CROSS_FAULTS + KS2_SCHOOL_FAULTS + KS2_AMENDMENT_FAULTS)
def test_key_reference_and_amendment_faults(ks2_validated, source_table, row_id, reason):
    _, rows = ks2_validated
    match = rows[(rows.source_table == source_table) & (rows.id == row_id)]
    assert len(match) >= 1 and set(match.reason_code) == {reason}


def test_duplicates_set_aside_every_copy(ks2_validated):
    _, rows = ks2_validated
    assert len(rows[(rows.source_table == "ks2_results") & (rows.id == "DUPRES")]) == 2
    assert len(rows[(rows.source_table == "pupils") & (rows.id == "DUPPUP")]) == 2
    assert len(rows[(rows.source_table == "schools") & (rows.id == "100008")]) == 2


def test_correction_applied_then_validated(ks2_validated):
    intake, rows = ks2_validated
    # P2001's reading score is corrected to 150 in the validated stage: out of range.
    match = rows[(rows.source_table == "ks2_results") & (rows.id == "P2001")]
    assert list(match.reason_code) == ["out_of_range.reading_scaled_score"]
    corrected = intake.pupils.where("pupil_id = 'P2007'").select("reading_scaled_score", "amended").collect()
    assert [(r.reading_scaled_score, r.amended) for r in corrected] == [(99, True)]


def test_corrections_not_applied_before_validation(spark, tmp_path):
    folder = write_inputs(tmp_path, _ks2_faulty_tables())
    intake, rows = _rejected(spark, folder, "ks2", "unvalidated")
    assert rows[(rows.source_table == "ks2_results") & (rows.id == "P2001")].empty
    corrected = intake.pupils.where("pupil_id = 'P2007'").select("reading_scaled_score", "amended").collect()
    assert [(r.reading_scaled_score, r.amended) for r in corrected] == [(104, False)]


def test_reconciliation_counts(ks2_validated):
    intake, rows = ks2_validated
    accepted = intake.pupils.count()
    for table in ("pupils", "ks2_results"):
        counts = intake.counts[table]
        assert counts["rows_in_scope"] == counts["rows_accepted"] + counts["rows_rejected"]
        assert counts["rows_accepted"] == accepted
        assert counts["rows_rejected"] == int((rows.source_table == table).sum())
    assert intake.counts["pupils"]["rows_other_key_stage"] == 4  # the KS4 pupils


def test_the_pupil_table_stage_frees_the_rows_intake_built_its_pupils_from(spark, tmp_path):
    """Nothing reads them after the pupil table is materialised: the rest of the release gets their memory."""
    from valueadded.io.runlog import RunRecord
    from valueadded.pipeline import Release, stage_intake, stage_pupil_table
    from valueadded.spark import persisted_rdds

    folder = write_inputs(tmp_path, valid_tables())
    record = RunRecord(run_id="test", command="", year=YEAR, key_stage="ks2", data_stage="validated", config_json="{}",
                       pseudonym_key_fingerprint="none")
    release = Release(spark, load_release_config(), folder, tmp_path / "out", YEAR, "ks2", "validated", record)
    stage_intake(release)
    accepted = release.intake.pupils.count()
    held = {frame._jdf.queryExecution().analyzed().rdd().id() for frame in release.intake.pupil_rows}  # noqa: SLF001
    assert len(held) == 2  # the pupils' and the results' rows
    stage_pupil_table(release)
    assert not (held & persisted_rdds(spark))
    assert release.intake.pupils is None and release.intake.pupil_rows == []
    assert release.frames["pupils"].count() == accepted  # the pupil table is intact
    release.intake.release()


def test_ks4_row_faults(spark, tmp_path):
    tables = valid_tables()
    add_ks4_pupil(tables, "S01", results={"english_points": 9.5})
    add_ks4_pupil(tables, "S02", results={"ks2_reading_test_code": "B"})  # score given with code B
    add_ks4_pupil(tables, "S03", results={"open_3_points": -1.0})
    add_ks4_pupil(tables, "S04", pupil={"date_of_birth": date(YEAR - 11, 1, 1)})  # a KS2-aged pupil
    folder = write_inputs(tmp_path, tables)
    _, rows = _rejected(spark, folder, "ks4", "unvalidated")
    got = {(r.source_table, r.id): r.reason_code for r in rows.itertuples()}
    assert got == {
        ("ks4_results", "S01"): "out_of_range.english_points",
        ("pupils", "S01"): "results_row_rejected",
        ("ks4_results", "S02"): "inconsistent.ks2_reading_scaled_score",
        ("pupils", "S02"): "results_row_rejected",
        ("ks4_results", "S03"): "out_of_range.open_3_points",
        ("pupils", "S03"): "results_row_rejected",
        ("pupils", "S04"): "impossible_date.date_of_birth",
        ("ks4_results", "S04"): "pupil_row_rejected",
    }


def _ks4_corrected_tables() -> dict:
    tables = valid_tables()
    tables["amendments"] += [
        {"pupil_id": "P4001", "key_stage": "ks4", "action": "correct", "field": "english_points", "new_value": "7.5", "reason": "review"},
        {"pupil_id": "P4001", "key_stage": "ks4", "action": "correct", "field": "open_2_points", "new_value": "0", "reason": "review"},
        {"pupil_id": "P4002", "key_stage": "ks4", "action": "correct", "field": "maths_points", "new_value": "9.5", "reason": "review"},
    ]
    return tables


@pytest.mark.parametrize("data_stage", ["unvalidated", "validated"])
def test_ks4_corrections_apply_only_when_validated(spark, tmp_path, data_stage):
    folder = write_inputs(tmp_path, _ks4_corrected_tables())
    intake, rows = _rejected(spark, folder, "ks4", data_stage)
    got = {
        r.pupil_id: (r.english_points, r.maths_points, r.open_2_points, r.amended)
        for r in intake.pupils.select("pupil_id", "english_points", "maths_points", "open_2_points", "amended").collect()
    }
    rejected = {(r.source_table, r.id): r.reason_code for r in rows.itertuples()}
    if data_stage == "unvalidated":
        assert got == {p: (6.0, 5.0, 5.0, False) for p in ("P4000", "P4001", "P4002", "P4003")}
        assert rejected == {}
    else:
        # P4002's corrected maths points (9.5) are out of range: the corrected row is checked.
        assert got == {"P4000": (6.0, 5.0, 5.0, False), "P4001": (7.5, 5.0, 0.0, True), "P4003": (6.0, 5.0, 5.0, False)}
        assert rejected == {("ks4_results", "P4002"): "out_of_range.maths_points", ("pupils", "P4002"): "results_row_rejected"}


@pytest.mark.parametrize("key_stage", ["ks2", "ks4"])
def test_every_frame_intake_materialises_runs_compiled_code(spark, tmp_path, monkeypatch, key_stage):
    """The code Spark generates for each frame intake computes stays under the size the JVM
    compiles (support/codegen.py); a longer method runs interpreted, for every input row.

    The KS4 results rows, with every row rule and the validated stage's corrections, came to
    one method of 10,653 bytes: the corrections' parsing of their text values was part of
    it. Measured on the national cohort, that frame took 5.2-6.2 s against 1.5-2.7 s now.
    """
    from support.codegen import JVM_HUGE_METHOD_LIMIT, generated_method_sizes
    from valueadded.io import intake as intake_module

    sizes: list[int] = []
    materialise = intake_module.materialise

    def measured_materialise(frame):
        sizes.extend(generated_method_sizes(frame))
        return materialise(frame)

    monkeypatch.setattr(intake_module, "materialise", measured_materialise)
    folder = write_inputs(tmp_path, _ks4_corrected_tables())
    run_intake(spark, folder, YEAR, key_stage, "validated", CODES)
    assert sizes and max(sizes) <= JVM_HUGE_METHOD_LIMIT, sizes


def test_csv_values_that_do_not_parse_are_rejected_not_coerced(spark, tmp_path):
    tables = valid_tables()
    add_ks2_pupil(tables, "C01", pupil={"idaci": "abc"})
    add_ks2_pupil(tables, "C02", results={"reading_scaled_score": "10x"})
    add_ks2_pupil(tables, "C03", pupil={"date_of_birth": "2013-02-30"})
    folder = write_inputs(tmp_path, tables, formats={"pupils": "csv", "ks2_results": "csv"})
    intake, rows = _rejected(spark, folder, "ks2", "unvalidated")
    got = {(r.source_table, r.id): r.reason_code for r in rows.itertuples()}
    assert got == {
        ("pupils", "C01"): "unparseable_value.idaci",
        ("ks2_results", "C01"): "pupil_row_rejected",
        ("ks2_results", "C02"): "unparseable_value.reading_scaled_score",
        ("pupils", "C02"): "results_row_rejected",
        ("pupils", "C03"): "unparseable_value.date_of_birth",
        ("ks2_results", "C03"): "pupil_row_rejected",
    }
    # The raw text is kept for the statistician.
    assert '"idaci":"abc"' in rows[(rows.source_table == "pupils") & (rows.id == "C01")].row_json.iloc[0]
    # Valid CSV rows read exactly as the Parquet ones would.
    assert intake.pupils.where("pupil_id = 'P2007'").first().idaci == pytest.approx(0.12)


# ---------------------------------------------------------------- structural faults


def _structural(spark, folder: Path) -> StructuralInputError:
    with pytest.raises(StructuralInputError) as caught:
        run_intake(spark, folder, YEAR, "ks2", "unvalidated", CODES)
    return caught.value


def test_missing_file(spark, tmp_path):
    tables = valid_tables()
    del tables["amendments"]
    error = _structural(spark, write_inputs(tmp_path, tables))
    assert error.rule == "missing_file" and "amendments" in str(error)


def test_missing_column(spark, tmp_path):
    folder = write_inputs(tmp_path, valid_tables())
    table = pq.read_table(folder / "pupils.parquet").drop(["idaci"])
    pq.write_table(table, folder / "pupils.parquet")
    error = _structural(spark, folder)
    assert (error.rule, error.column) == ("missing_column", "idaci")
    assert "pupils.parquet" in str(error)


def test_wrong_type(spark, tmp_path):
    folder = write_inputs(tmp_path, valid_tables())
    table = pq.read_table(folder / "pupils.parquet")
    index = table.schema.get_field_index("idaci")
    table = table.set_column(index, "idaci", pa.array([str(v) for v in table.column("idaci").to_pylist()]))
    pq.write_table(table, folder / "pupils.parquet")
    error = _structural(spark, folder)
    assert (error.rule, error.column) == ("wrong_type", "idaci")
    assert "expected double, found string" in str(error)


def test_empty_input(spark, tmp_path):
    tables = valid_tables()
    tables["schools"] = []
    error = _structural(spark, write_inputs(tmp_path, tables))
    assert (error.rule, error.count) == ("empty_input", 0)


def test_unreadable_csv(spark, tmp_path):
    folder = write_inputs(tmp_path, valid_tables(), formats={"schools": "csv"})
    with (folder / "schools.csv").open("a") as handle:
        handle.write('100077,"unterminated,primary\n')
    error = _structural(spark, folder)
    assert error.rule == "unreadable_csv" and "schools.csv" in str(error)


def test_csv_missing_header_column(spark, tmp_path):
    folder = write_inputs(tmp_path, valid_tables(), formats={"schools": "csv"})
    text = (folder / "schools.csv").read_text().replace("region_code,", "region,", 1)
    (folder / "schools.csv").write_text(text)
    error = _structural(spark, folder)
    assert (error.rule, error.column) == ("missing_column", "region_code")


# ---------------------------------------------------------------- thresholds and config


def test_rejected_share_threshold():
    counts = {"pupils": {"rows_in_scope": 1000, "rows_rejected": 11}, "schools": {"rows_in_scope": 10, "rows_rejected": 0}}
    with pytest.raises(ValidationThresholdError, match=r"pupils: 11 of 1000 rows \(1.10%\)"):
        check_rejected_share(counts, 0.01)
    check_rejected_share(counts, 0.011)  # at or under the share: the run continues


GOOD_CONFIG = (
    "max_rejected_share: 0.01\nshuffle_partitions: 8\nreference: ../reference/codes.yaml\n"
    "published_estimates: null\ncva_empty_terms: stop\nrollup: ../rollup/default.yaml\n"
)


@pytest.mark.parametrize(
    "text, message",
    [
        (GOOD_CONFIG + "typo: 1\n", "unknown key"),
        (GOOD_CONFIG.replace("max_rejected_share: 0.01", "max_rejected_share: 2"), "from 0 to 1"),
        (GOOD_CONFIG.replace("shuffle_partitions: 8\n", ""), "missing key"),
        (GOOD_CONFIG.replace("../reference/codes.yaml", "nowhere.yaml"), "not found"),
        (GOOD_CONFIG.replace("published_estimates: null", "published_estimates: {ks4: no-such-table}"), "no table"),
        (GOOD_CONFIG.replace("cva_empty_terms: stop", "cva_empty_terms: ignore"), "cva_empty_terms must be one of"),
        (GOOD_CONFIG.replace("rollup: ../rollup/default.yaml\n", ""), r"missing key\(s\) \['rollup'\]"),
    ],
)
def test_bad_configuration_is_named(tmp_path, text, message):
    path = tmp_path / "releases" / "bad.yaml"
    path.parent.mkdir()
    (tmp_path / "reference").mkdir()
    (tmp_path / "reference" / "codes.yaml").write_text((Path(load_release_config().source).parent.parent / "reference" / "codes.yaml").read_text())
    (tmp_path / "rollup").mkdir()
    (tmp_path / "rollup" / "default.yaml").write_text((Path(load_release_config().source).parent.parent / "rollup" / "default.yaml").read_text())
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_release_config(path)
    path.write_text(GOOD_CONFIG)
    assert load_release_config(path).cva_empty_terms == "stop"
