"""No output table of a release holds an input pupil id. Every string cell of every output
table, JSON text included, is scanned for every pupil id of the inputs, in two releases:

- the shared release of the generated cohort (tests/conftest.py: both key stages and data
  stages), which covers every table but has no rejected rows (the generator writes none);
- a KS2 validated release of a copy of its inputs with rows that break rules: a pupil row
  (read from CSV, so its row text is the raw text), a results row, and two amendments, one
  naming a pupil who is not in the inputs. It covers `rejected_rows` and its `row_json`.
"""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from valueadded.cli import main
from valueadded.config import DEFAULT_RELEASE_CONFIG
from valueadded.io.schemas import OUTPUT_TABLES

from support.pseudonyms import TEST_KEY, pseudonym_of

pytestmark = pytest.mark.slow
PUPIL_ID_INPUTS = ("pupils", "ks2_results", "ks4_results", "amendments")
UNKNOWN_PUPIL = "Z999999999999"


def _read_input(folder, name) -> pa.Table:
    path = folder / name
    if path.is_dir():
        return ds.dataset(str(path), format="parquet").to_table()
    return pa_csv.read_csv(folder / f"{name}.csv", convert_options=pa_csv.ConvertOptions(column_types={"pupil_id": pa.string()}))


def _output_tables(output_dir) -> dict[str, pd.DataFrame]:
    return {
        name: DeltaTable(str(output_dir / schema.audience / name)).to_pandas()
        for name, schema in OUTPUT_TABLES.items()
        if (output_dir / schema.audience / name).is_dir()
    }


def _input_pupil_ids(input_dir) -> set[str]:
    return {
        value for name in PUPIL_ID_INPUTS for value in _read_input(input_dir, name).column("pupil_id").to_pylist() if value
    }


@pytest.fixture(scope="module")
def release(generated_release):
    return _output_tables(generated_release.output_dir), _input_pupil_ids(generated_release.input_dir)


@pytest.fixture(scope="module")
def faulty_release(generated_release, tmp_path_factory):
    """A KS2 validated release of the generated inputs with four rows that break rules."""
    root = tmp_path_factory.mktemp("pseudonyms_faulty")
    inputs = root / "input"
    shutil.copytree(generated_release.input_dir, inputs)
    pupils = _read_input(inputs, "pupils")
    ks2 = [i for i, stage in enumerate(pupils.column("key_stage").to_pylist()) if stage == "ks2"]
    ethnicity = pupils.column("ethnicity").to_pylist()
    ethnicity[ks2[0]] = "NOT_A_CODE"
    shutil.rmtree(inputs / "pupils")
    pa_csv.write_csv(pupils.set_column(pupils.schema.get_field_index("ethnicity"), "ethnicity", pa.array(ethnicity)), inputs / "pupils.csv")
    results = _read_input(inputs, "ks2_results")
    scores = results.column("reading_scaled_score").to_pylist()
    scores[5] = 150
    shutil.rmtree(inputs / "ks2_results")
    (inputs / "ks2_results").mkdir()
    pq.write_table(results.set_column(results.schema.get_field_index("reading_scaled_score"), "reading_scaled_score",
                                      pa.array(scores, pa.int32())), inputs / "ks2_results" / "part-0.parquet")
    amendments = _read_input(inputs, "amendments")
    known = pupils.column("pupil_id")[ks2[1]].as_py()
    extra = pa.Table.from_pylist([
        {"pupil_id": known, "key_stage": "ks2", "action": "delete", "field": None, "new_value": None, "reason": "test"},
        {"pupil_id": UNKNOWN_PUPIL, "key_stage": "ks2", "action": "remove", "field": None, "new_value": None, "reason": "test"},
    ], schema=amendments.schema)
    pq.write_table(extra, inputs / "amendments" / "part-extra.parquet")
    # A handful of amendments is a large share of a small table: allow it.
    config = root / "release.yaml"
    conf = DEFAULT_RELEASE_CONFIG.parent.parent
    config.write_text(
        DEFAULT_RELEASE_CONFIG.read_text()
        .replace("max_rejected_share: 0.01", "max_rejected_share: 0.5")
        .replace("reference: ../reference/codes.yaml", f"reference: {conf / 'reference' / 'codes.yaml'}")
        .replace("rollup: ../rollup/default.yaml", f"rollup: {conf / 'rollup' / 'default.yaml'}")
    )
    assert main(["release", "--input", str(inputs), "--output", str(root / "output"), "--year", str(generated_release.year),
                 "--key-stage", "ks2", "--stage", "validated", "--config", str(config)]) == 0
    return _output_tables(root / "output"), _input_pupil_ids(inputs)


def raw_ids_in(frame: pd.DataFrame, raw_ids: set[str]) -> dict[str, set[str]]:
    """Column -> the raw ids found in it, anywhere in any string cell (as a substring)."""
    lengths = sorted({len(pupil_id) for pupil_id in raw_ids})
    found = {}
    for column in frame.columns:
        if frame[column].dtype != object:
            continue
        hits = set()
        for text in frame[column].dropna().unique():
            if not isinstance(text, str):
                continue
            for length in lengths:
                hits |= {text[i:i + length] for i in range(len(text) - length + 1)} & raw_ids
        if hits:
            found[column] = hits
    return found


@pytest.mark.parametrize("which", ["release", "faulty_release"])
def test_no_output_table_holds_an_input_pupil_id(which, request):
    tables, raw_ids = request.getfixturevalue(which)
    assert len(raw_ids) > 10_000 and set(tables) >= {"pupil_results", "pupil_progress", "pupil_measures", "rejected_rows", "runs"}
    # The scan finds ids where they are: in the inputs' own row text.
    assert raw_ids_in(pd.DataFrame({"row_json": [json.dumps({"pupil_id": sorted(raw_ids)[0]})]}), raw_ids)
    leaks = {name: found for name, table in tables.items() if (found := raw_ids_in(table, raw_ids))}
    assert not leaks, {name: {column: sorted(ids)[:3] for column, ids in found.items()} for name, found in leaks.items()}


@pytest.mark.parametrize("which", ["release", "faulty_release"])
def test_no_output_table_holds_the_key(which, request):
    tables, _ = request.getfixturevalue(which)
    forms = (TEST_KEY.secret.decode(), TEST_KEY.secret.hex())
    for name, table in tables.items():
        for column in table.columns:
            if table[column].dtype == object:
                text = table[column].dropna().astype(str)
                assert not any(text.str.contains(form, regex=False).any() for form in forms), f"{name}.{column}"


def test_pupil_ids_are_the_pseudonyms_of_the_input_ids(release):
    tables, raw_ids = release
    expected = {pseudonym_of(pupil_id) for pupil_id in raw_ids}
    for name in ("pupil_results", "pupil_progress", "pupil_measures"):
        assert set(tables[name].pupil_id) <= expected, name
    results = tables["pupil_results"]
    assert results.pupil_id.str.fullmatch("[0-9a-f]{32}").all()
    # The same pupil has the same pseudonym in both data stages.
    ks2 = results[results.key_stage == "ks2"]
    stages = [set(ks2[ks2.data_stage == stage].pupil_id) for stage in ("unvalidated", "validated")]
    assert len(stages[0] & stages[1]) > 0.9 * len(stages[0])


def test_each_pupil_is_hashed_once_per_release(generated_release):
    """The pupil tables take the pseudonyms the pupil table computed (valueadded.io.pseudonym,
    with_pupil_pseudonyms) instead of hashing every row again as they are written."""
    pupil_tables = ("pupil_results", "pupil_progress", "pupil_measures")
    written = {(w["table"], *w["partition"][1:]): w["pseudonyms"] for w in generated_release.writes if w["table"] in pupil_tables}
    partitions = [(key_stage, stage) for key_stage in ("ks2", "ks4") for stage in ("unvalidated", "validated")]
    assert written == {(table, *partition): "carried" for table in pupil_tables for partition in partitions}


def test_drill_down_joins_on_pseudonyms(release):
    tables, _ = release
    key = ["academic_year", "key_stage", "data_stage", "pupil_id"]
    results = tables["pupil_results"][key]
    for name in ("pupil_measures", "pupil_progress"):
        joined = tables[name][key].merge(results, on=key, how="left", indicator=True)
        assert (joined._merge == "both").all(), name
    assert len(tables["pupil_measures"]) == len(results)


def test_rejected_rows_keep_their_pupil_pseudonym_in_the_row_text(faulty_release):
    tables, raw_ids = faulty_release
    rejected = tables["rejected_rows"]
    assert set(rejected.source_table) == {"pupils", "ks2_results", "amendments"}
    assert rejected.pupil_id.notna().all() and len(rejected) == 6  # each fault, and its pupil's other row
    assert rejected.pupil_id.isin({pseudonym_of(pupil_id) for pupil_id in raw_ids}).all()
    assert pseudonym_of(UNKNOWN_PUPIL) in set(rejected.pupil_id)
    assert (rejected.row_json.map(lambda text: json.loads(text)["pupil_id"]) == rejected.pupil_id).all()
    # The rest of the row text is as read: the CSV row's raw text, the Parquet row's values.
    pupil_row = json.loads(rejected[(rejected.source_table == "pupils") & (rejected.reason_code != "results_row_rejected")].row_json.iloc[0])
    assert pupil_row["ethnicity"] == "NOT_A_CODE" and pupil_row["fsm"] in ("true", "false")


@pytest.mark.parametrize("which", ["release", "faulty_release"])
def test_run_log_names_the_key_by_its_fingerprint(which, request):
    runs = request.getfixturevalue(which)[0]["runs"]
    assert len(runs) >= 1 and (runs.pseudonym_key_fingerprint == TEST_KEY.fingerprint).all()
