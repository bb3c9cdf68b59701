"""Checking-exercise amendments for the validated data stage (~0.5% of pupils).

One row per amendment. Each chosen pupil gets one: `remove` (taken off roll), `add` (in the
input files but only counted once added at checking) or `correct` (one results column set to a
new, valid value, given as text). field and new_value are null except for `correct`.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from valueadded.io.schemas import AMENDMENTS

REMOVE_SHARE, ADD_SHARE, CORRECT_SHARE = 0.0025, 0.001, 0.0015
REMOVE_REASONS = {
    "ks2": ("left before tests", "moved abroad before tests", "admitted to hospital school"),
    "ks4": ("left school roll before the end of year 11", "moved abroad", "long-term medical absence"),
}
ADD_REASONS = {
    "ks2": ("on roll at the time of the tests, missing from the results list",),
    "ks4": ("on roll in the January census, missing from the results list",),
}
KS2_CORRECTION_REASONS = {"scaled_score": "review of marking", "writing_ta": "teacher assessment corrected"}
KS4_CORRECTION_REASON = "re-mark: grade changed"
KS4_CORRECTABLE_SLOTS = ("english_points", "maths_points", "ebacc_1_points", "open_1_points")
WRITING_TA_RAISED = {"WTS": "EXS", "EXS": "GDS"}
MAX_SCORE_RISE = 3


def _choose_actions(rng, n: int) -> np.ndarray:
    """Per pupil: 0 none, 1 remove, 2 add, 3 correct."""
    u = rng.random(n)
    return np.where(u < REMOVE_SHARE, 1, np.where(u < REMOVE_SHARE + ADD_SHARE, 2,
                                                     np.where(u < REMOVE_SHARE + ADD_SHARE + CORRECT_SHARE, 3, 0)))


def _rows(pupil_id, key_stage, action, field, new_value, reason) -> dict[str, list]:
    return {"pupil_id": pupil_id, "key_stage": key_stage, "action": action, "field": field,
            "new_value": new_value, "reason": reason}


def _remove_and_add(rng, pupil_ids: pa.Array, key_stage: str, actions: np.ndarray) -> dict[str, list]:
    out = _rows([], [], [], [], [], [])
    for code, name, reasons in ((1, "remove", REMOVE_REASONS), (2, "add", ADD_REASONS)):
        chosen = np.flatnonzero(actions == code)
        picks = rng.integers(0, len(reasons[key_stage]), len(chosen))
        for i, k in zip(chosen, picks):
            for column, value in zip(out, (pupil_ids[i].as_py(), key_stage, name, None, None, reasons[key_stage][k])):
                out[column].append(value)
    return out


def ks2_amendments(rng, pupil_ids: pa.Array, scores: dict[str, np.ndarray], writing_ta: np.ndarray) -> dict[str, list]:
    """Amendments for a block's KS2 pupils.

    `scores` holds reading/maths scaled scores (-1 for null); `writing_ta` the writing TA labels.
    """
    actions = _choose_actions(rng, len(pupil_ids))
    out = _remove_and_add(rng, pupil_ids, "ks2", actions)
    for i in np.flatnonzero(actions == 3):
        options = [f"{s}_scaled_score" for s in ("reading", "maths") if 0 < scores[s][i] < 120]
        if writing_ta[i] in WRITING_TA_RAISED:
            options.append("writing_ta")
        if not options:
            continue
        field = options[rng.integers(0, len(options))]
        if field == "writing_ta":
            new_value, reason = WRITING_TA_RAISED[writing_ta[i]], KS2_CORRECTION_REASONS["writing_ta"]
        else:
            old = scores[field.split("_")[0]][i]
            new_value = str(int(min(120, old + rng.integers(1, MAX_SCORE_RISE + 1))))
            reason = KS2_CORRECTION_REASONS["scaled_score"]
        for column, value in zip(out, (pupil_ids[i].as_py(), "ks2", "correct", field, new_value, reason)):
            out[column].append(value)
    return out


def ks4_amendments(rng, pupil_ids: pa.Array, slots: np.ndarray) -> dict[str, list]:
    """Amendments for a block's KS4 pupils. `slots` is (n, 8) in A8_SLOT_COLUMNS order."""
    actions = _choose_actions(rng, len(pupil_ids))
    out = _remove_and_add(rng, pupil_ids, "ks4", actions)
    slot_position = {"english_points": 0, "maths_points": 1, "ebacc_1_points": 2, "open_1_points": 5}
    for i in np.flatnonzero(actions == 3):
        options = [f for f in KS4_CORRECTABLE_SLOTS if 0 < slots[i, slot_position[f]] <= 8]
        if not options:
            continue
        field = options[rng.integers(0, len(options))]
        new_value = f"{slots[i, slot_position[field]] + 1:.2f}"
        row = (pupil_ids[i].as_py(), "ks4", "correct", field, new_value, KS4_CORRECTION_REASON)
        for column, value in zip(out, row):
            out[column].append(value)
    return out


def amendments_table(parts: list[dict[str, list]]) -> pa.Table:
    """All amendments as the `amendments` input table, sorted by pupil and key stage."""
    columns = {name: [v for part in parts for v in part[name]] for name in AMENDMENTS.names}
    table = pa.table(columns, schema=AMENDMENTS.arrow_schema())
    return table.sort_by([("key_stage", "ascending"), ("pupil_id", "ascending"), ("action", "ascending")])
