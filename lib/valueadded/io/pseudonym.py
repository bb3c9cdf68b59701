"""Pupil pseudonyms: every pupil identifier in an output table is a keyed hash of it.

The rule: a pupil's pseudonym is the first 32 hexadecimal digits (128 bits, lower case)
of HMAC-SHA256(key, pupil id as UTF-8). The key is a secret of at least 16 bytes, read
from an environment variable (`VALUEADDED_PSEUDONYM_KEY` unless the release names
another), which a scheduler fills from its secret store. It is never read from `conf/`
and never written anywhere: not to the configuration, the logs, the run log or an
error message. The run log records the key's fingerprint instead (`fingerprint`), so an
auditor can tell which key a release used without learning it.

The same key gives the same pseudonym in every table, key stage, data stage and year,
so drill-down joins (pupil_measures to pupil_results) and comparisons across releases
work on pseudonyms, and a re-run gives identical tables. A different key gives
unrelated pseudonyms: keep one key for every release whose pupils must be matched.

Where: at the write boundary only (valueadded.io.delta_store). Inputs, validation,
amendments and joins use the raw identifiers; the declared output schemas
(valueadded.io.schemas) mark the columns that hold one (`Column.identifies_pupil`) and
the JSON text columns that may carry one under a known name (`Column.json_pupil_keys`,
e.g. `rejected_rows.row_json`), and the store replaces them before it writes.

Computed once per pupil: a release hashes its pupils' ids as it builds the pupil table
(`with_pupil_pseudonyms`) into a column named for the key's fingerprint, and the frames
it derives carry that column beside `pupil_id` (`carried_pseudonyms`). The store then
takes a pupil's pseudonym from it instead of hashing again: pupil_results,
pupil_progress (three rows per KS2 pupil, eight per KS4 pupil) and pupil_measures hold
the same pupils. A column computed with another key than the store's is refused.

Why a pandas UDF and not Spark SQL: Spark has no HMAC function, and building one from
`sha2` needs the key's pads as literals in the query plan, which Spark prints in its UI,
event logs and error messages. In the UDF the key travels to the executors inside the
serialised task and the plan shows only `pupil_pseudonym(pupil_id)`. The arithmetic is
plain Python (`pseudonym`, `pseudonymise_json`), tested on its own against `hmac`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from valueadded.config import ConfigError

if TYPE_CHECKING:
    from valueadded.io.schemas import TableSchema

DEFAULT_KEY_VARIABLE = "VALUEADDED_PSEUDONYM_KEY"
MIN_KEY_BYTES = 16
PSEUDONYM_HEX_DIGITS = 32
FINGERPRINT_HEX_DIGITS = 16
# The fingerprint is the HMAC of this fixed label: it identifies the key, and reveals
# nothing about it or about any pupil's pseudonym.
FINGERPRINT_LABEL = b"valueadded pseudonym key fingerprint v1"
KEY_HELP = (
    "Set it from the release's secret store, the same key for every release whose pupils must match across "
    "tables and years (e.g. `export {variable}=\"$(cat /run/secrets/valueadded_pseudonym_key)\"`; on Databricks "
    "the bundle sets it from a secret scope, deploy/README.md); never put it in conf/ or on the command line. "
    "A new key: `openssl rand -hex 32`."
)


class PseudonymKeyError(ConfigError):
    """The pseudonym key is missing or unusable. The message names the variable, never the value."""


@dataclass(frozen=True)
class PseudonymKey:
    """The secret that pupil pseudonyms are computed with, and where it came from.

    `source` says where the secret came from, e.g. "$VALUEADDED_PSEUDONYM_KEY". `repr`
    and `str` show the source and the fingerprint, never the secret.
    """

    source: str
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_KEY_BYTES:
            raise PseudonymKeyError(
                f"the pupil pseudonym key in {self.source} is {len(self.secret)} bytes long; it must be at least {MIN_KEY_BYTES}"
            )

    @classmethod
    def from_environment(cls, variable: str = DEFAULT_KEY_VARIABLE, environ: Mapping[str, str] | None = None) -> "PseudonymKey":
        """The key in environment variable `variable` (its value's UTF-8 bytes).

        Raises:
            PseudonymKeyError: the variable is unset or empty, has leading or trailing
                whitespace (a newline copied from a file would silently change every
                pseudonym), or is shorter than MIN_KEY_BYTES. The message names the
                variable and says how to set it; it never quotes the value.
        """
        value = (os.environ if environ is None else environ).get(variable, "")
        help_text = KEY_HELP.format(variable=variable)
        if not value:
            raise PseudonymKeyError(
                f"no pupil pseudonym key: environment variable ${variable} is not set. Pupil identifiers in the "
                f"outputs are keyed hashes, so a release needs the key. {help_text}"
            )
        if value != value.strip():
            raise PseudonymKeyError(
                f"the pupil pseudonym key in ${variable} has leading or trailing whitespace (a newline from a file?); "
                "remove it: the key is used exactly as given, and any change gives other pseudonyms."
            )
        secret = value.encode("utf-8")
        if len(secret) < MIN_KEY_BYTES:
            raise PseudonymKeyError(
                f"the pupil pseudonym key in ${variable} is {len(secret)} bytes long; it must be at least "
                f"{MIN_KEY_BYTES}. {help_text}"
            )
        return cls(f"${variable}", secret)

    @property
    def fingerprint(self) -> str:
        """Identifies the key in the run log: HMAC-SHA256(key, FINGERPRINT_LABEL), first 16 hex digits."""
        return hmac.new(self.secret, FINGERPRINT_LABEL, hashlib.sha256).hexdigest()[:FINGERPRINT_HEX_DIGITS]

    def __str__(self) -> str:
        return f"the key in {self.source} (fingerprint {self.fingerprint})"


def pseudonym(pupil_id: str, secret: bytes) -> str:
    """The pseudonym of one pupil identifier: HMAC-SHA256(secret, id), first 32 hex digits."""
    return hmac.new(secret, pupil_id.encode("utf-8"), hashlib.sha256).hexdigest()[:PSEUDONYM_HEX_DIGITS]


def _pseudonymiser(secret: bytes):
    """`pseudonym` for many ids: RFC 2104 with SHA-256 states primed with the padded key.

    Copying a primed state costs less than half of `hmac.new` per id (measured: 0.9 us
    against 2.2 us); the result is the same (tests/unit/test_pseudonym.py).
    """
    block = hashlib.sha256().block_size
    padded = (hashlib.sha256(secret).digest() if len(secret) > block else secret).ljust(block, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in padded))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in padded))

    def one(pupil_id: str) -> str:
        digest = inner.copy()
        digest.update(pupil_id.encode("utf-8"))
        result = outer.copy()
        result.update(digest.digest())
        return result.hexdigest()[:PSEUDONYM_HEX_DIGITS]

    return one


def pseudonyms(pupil_ids: pd.Series, secret: bytes) -> pd.Series:
    """`pseudonym` of every value of a Series of strings; null stays null.

    Each distinct id is hashed once: pupil_progress holds several rows per pupil, next to
    each other.
    """
    one = _pseudonymiser(secret)
    codes, distinct = pd.factorize(pupil_ids, use_na_sentinel=True)  # null -> code -1
    hashed = np.array([*(one(value) for value in distinct), None], dtype=object)  # [-1] is None
    return pd.Series(hashed[codes], index=pupil_ids.index, dtype=object)


def _json_key_pattern(names: tuple[str, ...]) -> re.Pattern:
    # A quote inside a JSON string is always escaped, so `"name":` matches object keys only.
    return re.compile("|".join(rf'"{re.escape(name)}"\s*:\s*' for name in names))


_DECODER = json.JSONDecoder()


def pseudonymise_json(text: str | None, names: tuple[str, ...], secret: bytes) -> str | None:
    """JSON text with the value of every key in `names` replaced by its pseudonym.

    Only those values change; the rest of the text is kept byte for byte. A null value
    stays null; a value that is not a string (a number) is replaced by the pseudonym of
    its JSON text.

    Raises:
        ValueError: the text after a matching key is not a JSON value (never silently left).
    """
    if text is None:
        return None
    parts, position = [], 0
    for match in _json_key_pattern(names).finditer(text):
        if match.start() < position:
            continue
        value, end = _DECODER.raw_decode(text, match.end())
        if value is None:
            continue
        raw = value if isinstance(value, str) else text[match.end():end]
        parts += [text[position:match.end()], json.dumps(pseudonym(raw, secret))]
        position = end
    return "".join(parts) + text[position:]


def _pupil_pseudonym_udf(secret: bytes):
    # The secret is in the UDF's closure: shipped inside the serialised task, never in the plan.
    @F.pandas_udf("string")
    def pupil_pseudonym(pupil_ids: pd.Series) -> pd.Series:
        return pseudonyms(pupil_ids, secret)

    return pupil_pseudonym


def _json_pseudonym_udf(secret: bytes, names: tuple[str, ...]):
    @F.pandas_udf("string")
    def json_pupil_pseudonyms(texts: pd.Series) -> pd.Series:
        return pd.Series(
            [pseudonymise_json(text if isinstance(text, str) else None, names, secret) for text in texts],
            index=texts.index, dtype=object,
        )

    return json_pupil_pseudonyms


CARRIED_PREFIX = "_pupil_id_pseudonym_"


def carried_column(key: PseudonymKey) -> str:
    """The column that carries pupil_id's pseudonyms under `key` (with_pupil_pseudonyms)."""
    return f"{CARRIED_PREFIX}{key.fingerprint}"


def carried_pseudonyms(frame: DataFrame) -> list[str]:
    """The frame's carried pseudonym columns: select them with `pupil_id` to keep them in step."""
    return [name for name in frame.columns if name.startswith(CARRIED_PREFIX)]


def with_pupil_pseudonyms(frame: DataFrame, key: PseudonymKey) -> DataFrame:
    """The frame with the pseudonym of each row's `pupil_id` in the column carried_column(key).

    Hash once, where the pupils are one row each; a frame derived from this one that keeps
    the column beside `pupil_id` is written without hashing again (pseudonymise).
    """
    return frame.withColumn(carried_column(key), _pupil_pseudonym_udf(key.secret)(F.col("pupil_id")))


def pseudonymise(frame: DataFrame, schema: "TableSchema", key: PseudonymKey) -> DataFrame:
    """The frame with every pupil identifier of `schema` replaced by its pseudonym.

    Columns marked `identifies_pupil` are hashed whole, or `pupil_id` is taken from the
    column carried_column(key) when the frame carries it; in columns with
    `json_pupil_keys` the values of those keys are hashed inside the JSON text. Other
    columns, and the column order, are unchanged; carried columns are dropped.

    Raises:
        ValueError: the frame carries pseudonyms computed with another key.
    """
    carried = carried_pseudonyms(frame)
    own = carried_column(key)
    foreign = [name for name in carried if name != own]
    if foreign:
        raise ValueError(
            f"{schema.name}: the frame carries pupil pseudonyms computed with another key (fingerprint "
            f"{foreign[0][len(CARRIED_PREFIX):]}), not {key}"
        )
    replaced = {}
    for column in schema.columns:
        if column.name not in frame.columns:
            continue
        if column.identifies_pupil and column.name == "pupil_id" and own in carried:
            replaced[column.name] = F.col(own)
        elif column.identifies_pupil:
            replaced[column.name] = _pupil_pseudonym_udf(key.secret)(F.col(column.name))
        elif column.json_pupil_keys:
            replaced[column.name] = _json_pseudonym_udf(key.secret, column.json_pupil_keys)(F.col(column.name))
    return frame.select(*[replaced[name].alias(name) if name in replaced else F.col(name) for name in frame.columns if name not in carried])
