"""The tests' pupil pseudonym key: the generated cohort's development key (not a secret).

tests/conftest.py puts it in $VALUEADDED_PSEUDONYM_KEY for the whole session, so every
release a test runs uses it; a test comparing output pupil ids with input ids hashes the
input ids with `pseudonymised`.
"""

from __future__ import annotations

from collections.abc import Iterable

from valueadded.io.pseudonym import PseudonymKey, pseudonym
from valueadded.synth import SYNTHETIC_COHORT_PSEUDONYM_KEY

TEST_KEY = PseudonymKey("tests (valueadded.synth.SYNTHETIC_COHORT_PSEUDONYM_KEY)", SYNTHETIC_COHORT_PSEUDONYM_KEY.encode())


def pseudonym_of(pupil_id: str) -> str:
    """The output pupil id of an input pupil id, under the tests' key."""
    return pseudonym(pupil_id, TEST_KEY.secret)


def pseudonymised(pupil_ids: Iterable[str]) -> set[str]:
    """The output pupil ids of these input ids, under the tests' key."""
    return {pseudonym_of(pupil_id) for pupil_id in pupil_ids}
