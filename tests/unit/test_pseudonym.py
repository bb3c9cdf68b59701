"""Pupil pseudonyms (valueadded.io.pseudonym): the keyed hash against Python's hmac module,
the key's checks and fingerprint, the JSON rewrite, the Spark write path, and a release
stopped before any work without a key."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from valueadded.cli import EXIT_BAD_INPUT, main
from valueadded.io.delta_store import TableStore
from valueadded.io.pseudonym import (
    DEFAULT_KEY_VARIABLE,
    FINGERPRINT_LABEL,
    MIN_KEY_BYTES,
    PseudonymKey,
    PseudonymKeyError,
    pseudonym,
    carried_column,
    pseudonymise,
    pseudonymise_json,
    pseudonyms,
    with_pupil_pseudonyms,
)
from valueadded.io.schemas import INPUT_TABLES, OUTPUT_TABLES, REJECTED_ROWS, RUNS, Column, TableSchema
from valueadded.synth import SYNTHETIC_COHORT_PSEUDONYM_KEY

KEY = PseudonymKey("a test", b"unit-test-key-0123456789")
# 16 bytes (the minimum), a whole SHA-256 block, and longer than a block (hashed first, RFC 2104).
SECRETS = (b"k" * MIN_KEY_BYTES, bytes(range(64)), b"long key " * 20)
IDS = ("A000000000001", "K123456789012", "", "é-ü 日本", "x" * 300)


def reference(pupil_id: str, secret: bytes) -> str:
    return hmac.new(secret, pupil_id.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


@pytest.mark.parametrize("secret", SECRETS)
def test_pseudonym_is_truncated_hmac_sha256(secret):
    for pupil_id in IDS:
        assert pseudonym(pupil_id, secret) == reference(pupil_id, secret)
    assert len(pseudonym("A1", secret)) == 32 and set(pseudonym("A1", secret)) <= set("0123456789abcdef")


@pytest.mark.parametrize("secret", SECRETS)
def test_pseudonyms_of_a_series_match_one_by_one_and_keep_nulls(secret):
    values = pd.Series([*IDS, None, np.nan, IDS[0], IDS[1], IDS[0]], index=range(10, 20), dtype=object)
    result = pseudonyms(values, secret)
    assert list(result.index) == list(values.index)
    assert list(result) == [reference(v, secret) if isinstance(v, str) else None for v in values]
    assert pseudonyms(pd.Series([], dtype=object), secret).empty


def test_different_keys_give_unrelated_pseudonyms():
    assert pseudonym("A000000000001", SECRETS[0]) != pseudonym("A000000000001", SECRETS[1])


def test_key_comes_from_the_named_variable():
    key = PseudonymKey.from_environment("MY_KEY", {"MY_KEY": "s" * 20, DEFAULT_KEY_VARIABLE: "t" * 20})
    assert key.secret == b"s" * 20 and key.source == "$MY_KEY"
    assert PseudonymKey.from_environment(environ={DEFAULT_KEY_VARIABLE: "t" * 20}).secret == b"t" * 20


@pytest.mark.parametrize("environ", [{}, {DEFAULT_KEY_VARIABLE: ""}])
def test_missing_key_message_names_the_variable_and_how_to_set_it(environ):
    with pytest.raises(PseudonymKeyError) as error:
        PseudonymKey.from_environment(environ=environ)
    message = str(error.value)
    assert f"${DEFAULT_KEY_VARIABLE} is not set" in message
    assert f"export {DEFAULT_KEY_VARIABLE}=" in message and "secret" in message


def test_keys_shorter_than_16_bytes_are_refused_without_showing_them():
    short = "fifteen-bytes!!"
    assert len(short.encode()) == MIN_KEY_BYTES - 1
    with pytest.raises(PseudonymKeyError, match=f"15 bytes long; it must be at least {MIN_KEY_BYTES}") as error:
        PseudonymKey.from_environment(environ={DEFAULT_KEY_VARIABLE: short})
    assert short not in str(error.value)
    with pytest.raises(PseudonymKeyError):
        PseudonymKey("code", short.encode())
    # Length is counted in bytes: 8 two-byte characters are enough.
    assert len(PseudonymKey.from_environment(environ={DEFAULT_KEY_VARIABLE: "é" * 8}).secret) == 16


@pytest.mark.parametrize("value", ["a-sixteen-byte-key\n", " a-sixteen-byte-key"])
def test_key_with_surrounding_whitespace_is_refused(value):
    with pytest.raises(PseudonymKeyError, match="whitespace") as error:
        PseudonymKey.from_environment(environ={DEFAULT_KEY_VARIABLE: value})
    assert value.strip() not in str(error.value)


def test_fingerprint_identifies_the_key_and_nothing_shows_the_secret():
    assert KEY.fingerprint == hmac.new(KEY.secret, FINGERPRINT_LABEL, hashlib.sha256).hexdigest()[:16]
    assert PseudonymKey("other", b"another-key-0123456789").fingerprint != KEY.fingerprint
    assert PseudonymKey("same key, other source", KEY.secret).fingerprint == KEY.fingerprint
    for shown in (repr(KEY), str(KEY), f"{KEY}"):
        assert KEY.secret.decode() not in shown and KEY.secret.hex() not in shown
    assert KEY.fingerprint in str(KEY)


def test_json_rewrite_changes_only_pupil_id_values():
    row = {"pupil_id": "A000000000001", "reason": 'says "pupil_id":"B1"', "idaci": 1.5e-07, "field": "pupil_id", "new_value": None}
    text = json.dumps(row, separators=(",", ":"))
    rewritten = pseudonymise_json(text, ("pupil_id",), KEY.secret)
    assert json.loads(rewritten) == {**row, "pupil_id": reference("A000000000001", KEY.secret)}
    assert rewritten.replace(reference("A000000000001", KEY.secret), "A000000000001") == text  # the rest byte for byte
    assert pseudonymise_json('{"pupil_id":null,"x":1}', ("pupil_id",), KEY.secret) == '{"pupil_id":null,"x":1}'
    assert pseudonymise_json(None, ("pupil_id",), KEY.secret) is None
    # A number where an id should be is hashed too (as its JSON text), never left.
    assert json.loads(pseudonymise_json('{"pupil_id":12345}', ("pupil_id",), KEY.secret)) == {"pupil_id": reference("12345", KEY.secret)}
    # Escapes are decoded before hashing, as the id was read.
    assert json.loads(pseudonymise_json(json.dumps({"pupil_id": 'a"b\\c'}), ("pupil_id",), KEY.secret))["pupil_id"] == reference('a"b\\c', KEY.secret)


def test_every_pupil_id_output_column_is_marked_for_pseudonyms():
    """Structural: a column of an output table named like a pupil id, or a JSON column of a
    table with pupil rows, is pseudonymised; input tables keep raw ids."""
    for schema in OUTPUT_TABLES.values():
        for column in schema.columns:
            if "pupil" in column.name and column.name.endswith("_id"):
                assert column.identifies_pupil, f"{schema.name}.{column.name}"
    assert REJECTED_ROWS.pseudonymised == ("pupil_id", "row_json")
    assert REJECTED_ROWS.column("row_json").json_pupil_keys == ("pupil_id",)
    assert {name for name, schema in OUTPUT_TABLES.items() if schema.pseudonymised} == {
        "pupil_results", "pupil_progress", "pupil_measures", "rejected_rows"
    }
    assert not any(schema.pseudonymised for schema in INPUT_TABLES.values())
    with pytest.raises(ValueError, match="only a string column"):
        Column("pupil_id", "long", identifies_pupil=True)


# ----------------------------------------------------------------------------- Spark

ROWS = TableSchema(
    name="rows",
    grain="test",
    partition_by=("academic_year", "key_stage", "data_stage"),
    columns=(
        Column("academic_year", "int", False), Column("key_stage", "string", False), Column("data_stage", "string", False),
        Column("pupil_id", "string", True, identifies_pupil=True),
        Column("school_id", "string", False),
        Column("row_json", "string", True, json_pupil_keys=("pupil_id",)),
    ),
)


def _rows(spark):
    data = [
        ("A000000000001", "100001", '{"pupil_id":"A000000000001","school_id":"100001"}'),
        ("A000000000002", "100001", '{"pupil_id":"A000000000002","school_id":"100001"}'),
        (None, "100002", '{"pupil_id":null,"school_id":"100002"}'),
        ("A000000000001", "100003", None),
    ]
    return spark.createDataFrame(data, "pupil_id string, school_id string, row_json string")


def test_spark_pseudonymise_replaces_marked_columns_and_keeps_the_key_out_of_the_plan(spark):
    frame = pseudonymise(_rows(spark), ROWS, KEY)
    assert frame.columns == ["pupil_id", "school_id", "row_json"]
    rows = [r.asDict() for r in frame.collect()]
    expected = [reference(f"A00000000000{i}", KEY.secret) for i in (1, 2)]
    assert [r["pupil_id"] for r in rows] == [expected[0], expected[1], None, expected[0]]
    assert [r["school_id"] for r in rows] == ["100001", "100001", "100002", "100003"]
    assert [r["row_json"] and json.loads(r["row_json"])["pupil_id"] for r in rows] == [expected[0], expected[1], None, None]
    plan = frame._jdf.queryExecution().toString()  # noqa: SLF001 - what the Spark UI and event log show
    assert "pupil_pseudonym" in plan
    for form in (KEY.secret.decode(), KEY.secret.hex(), KEY.secret.hex().upper()):
        assert form not in plan


def test_store_writes_pseudonyms_and_refuses_pupil_ids_without_a_key(spark, tmp_path):
    with pytest.raises(ValueError, match="needs a pseudonym key"):
        TableStore(spark, tmp_path).replace_partition(_rows(spark), ROWS, 2024, "ks2", "unvalidated")
    assert not (tmp_path / "restricted" / "rows").exists()
    TableStore(spark, tmp_path, pseudonym_key=KEY).replace_partition(_rows(spark), ROWS, 2024, "ks2", "unvalidated")
    written = DeltaTable(str(tmp_path / "restricted" / "rows")).to_pandas()
    assert set(written.pupil_id.dropna()) == {reference(f"A00000000000{i}", KEY.secret) for i in (1, 2)}
    assert not written.row_json.fillna("").str.contains("A00000000000").any()


def test_store_takes_carried_pseudonyms_and_refuses_those_of_another_key(spark, tmp_path):
    """A frame derived from one with with_pupil_pseudonyms() is written without hashing again,
    with the same pseudonyms; carried pseudonyms of another key are never written."""
    carried = with_pupil_pseudonyms(_rows(spark), KEY)
    assert carried.columns == ["pupil_id", "school_id", "row_json", carried_column(KEY)]
    # A derived frame: the carried column travels beside pupil_id, in another order.
    derived = carried.select(carried_column(KEY), "row_json", "school_id", "pupil_id")
    plan = pseudonymise(derived, ROWS, KEY)._jdf.queryExecution().optimizedPlan().toString()  # noqa: SLF001
    # pupil_id hashed once, upstream in with_pupil_pseudonyms; row_json as written.
    assert len(re.findall(r"(?<!json_)pupil_pseudonym\(", plan)) == 1
    assert len(re.findall(r"json_pupil_pseudonyms\(", plan)) == 1
    store = TableStore(spark, tmp_path, pseudonym_key=KEY)
    staged = store.stage_partition(derived, ROWS, 2024, "ks2", "unvalidated")
    assert staged.pseudonyms == "carried"
    store.commit(staged)
    written = DeltaTable(str(tmp_path / "restricted" / "rows")).to_pandas()
    assert list(written.columns) == ROWS.names
    assert list(written.pupil_id) == [reference("A000000000001", KEY.secret), reference("A000000000002", KEY.secret), None,
                                      reference("A000000000001", KEY.secret)]
    assert store.stage_partition(_rows(spark), ROWS, 2024, "ks2", "unvalidated").pseudonyms == "hashed"

    other = PseudonymKey("another", b"another-key-0123456789")
    with pytest.raises(ValueError, match=f"another key \\(fingerprint {other.fingerprint}\\)"):
        store.stage_partition(with_pupil_pseudonyms(_rows(spark), other), ROWS, 2024, "ks2", "unvalidated")


def test_release_without_a_key_stops_before_any_work(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("NO_SUCH_KEY_VARIABLE", raising=False)
    with caplog.at_level(logging.ERROR):
        code = main(["release", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                     "--key-stage", "ks2", "--pseudonym-key-env", "NO_SUCH_KEY_VARIABLE"])
    assert code == EXIT_BAD_INPUT
    assert "$NO_SUCH_KEY_VARIABLE is not set" in caplog.text
    assert not (tmp_path / "out").exists()  # no lock, no run log: nothing was started
    monkeypatch.setenv("SHORT_KEY_VARIABLE", "too-short")
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        code = main(["release", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                     "--key-stage", "ks2", "--pseudonym-key-env", "SHORT_KEY_VARIABLE"])
    assert code == EXIT_BAD_INPUT
    assert "$SHORT_KEY_VARIABLE is 9 bytes long" in caplog.text and "too-short" not in caplog.text
    assert not (tmp_path / "out").exists()


def test_output_folder_of_an_earlier_schema_version_stops_the_release(tmp_path, caplog):
    """A runs table without pseudonym_key_fingerprint (schema v1) could not take this run's
    row: the release stops at once (exit 2) instead of losing its run log row."""
    old = pa.schema([field for field in RUNS.arrow_schema() if field.name != "pseudonym_key_fingerprint"])
    write_deltalake(str(tmp_path / "out" / "restricted" / "runs"), old.empty_table(), partition_by=["academic_year", "key_stage", "data_stage"])
    with caplog.at_level(logging.ERROR):
        code = main(["release", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--key-stage", "ks2"])
    assert code == EXIT_BAD_INPUT
    assert "earlier schema version: runs (this code writes v2)" in caplog.text
    assert not (tmp_path / "out" / "_locks").exists()


def test_bin_release_uses_the_synthetic_cohort_key_only_for_the_generated_cohort():
    script = (Path(__file__).resolve().parents[2] / "bin" / "release").read_text()
    assert f'VALUEADDED_PSEUDONYM_KEY="{SYNTHETIC_COHORT_PSEUDONYM_KEY}"' in script
    assert "--input | --input=*) generated=false" in script
