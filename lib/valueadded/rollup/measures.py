"""The measures the roll-up stage carries to every level, per key stage, and their kinds.

A measure's kind says how its pupil values behave above the school:

- `progress`: the pupil's adjusted progress (pupil_progress); aggregates have a 95%
  interval from the national pupil-level SD and a band.
- `attainment`: a pupil value whose mean is the figure (100 or 0 for a "% reaching"
  measure, the scaled score or Attainment 8 for an average); no interval, no band.
- `cva`: the pupil's CVA score plus the model's centre (100 or 1000); aggregates have an
  interval from the national SD of pupil CVA, no band.

The names are those of `school_scores.measure`, written by the key stage measures
(valueadded.measures.ks2 / ks4) and the CVA stage; the stage stops on a school measure
missing here, and tests check the subjects against the measure modules'. This module
imports nothing of the engine, so the table schemas can list the measures.
"""

from __future__ import annotations

from dataclasses import dataclass

PROGRESS, ATTAINMENT, CVA = "progress", "attainment", "cva"
CVA_MEASURE = "cva"

KS2_PROGRESS_SUBJECTS = ("reading", "writing", "maths")
KS2_STANDARD_SUBJECTS = ("reading", "writing", "maths", "rwm")
KS2_SCALED_SUBJECTS = ("reading", "maths")
# valueadded.measures.ks4_tables.KS4_SUBJECTS (tests/unit/test_rollup_config.py checks they agree).
KS4_SUBJECTS = ("progress_8", "english", "maths", "ebacc", "open", "ebacc_science", "ebacc_humanities", "ebacc_languages")


@dataclass(frozen=True)
class Measure:
    """One measure: its `school_scores` name, kind, and the subject it comes from.

    Attributes:
        name: the measure name in every output table.
        kind: progress, attainment or cva.
        subject: for progress measures, the `pupil_progress.subject` behind it; for KS2
            attainment, the subject (reading, writing, maths, rwm); else None.
    """

    name: str
    kind: str
    subject: str | None = None


def progress_measure_name(subject: str) -> str:
    """`school_scores` name of a progress subject: progress_<subject>, but progress_8 as is."""
    return subject if subject == "progress_8" else f"progress_{subject}"


def _ks2() -> tuple[Measure, ...]:
    measures = [Measure(progress_measure_name(s), PROGRESS, s) for s in KS2_PROGRESS_SUBJECTS]
    for subject in KS2_STANDARD_SUBJECTS:
        measures.append(Measure(f"pct_expected_{subject}", ATTAINMENT, subject))
        measures.append(Measure(f"pct_higher_{subject}", ATTAINMENT, subject))
    measures += [Measure(f"average_scaled_score_{s}", ATTAINMENT, s) for s in KS2_SCALED_SUBJECTS]
    return (*measures, Measure(CVA_MEASURE, CVA))


def _ks4() -> tuple[Measure, ...]:
    measures = [Measure(progress_measure_name(s), PROGRESS, s) for s in KS4_SUBJECTS]
    return (*measures, Measure("attainment_8", ATTAINMENT), Measure(CVA_MEASURE, CVA))


MEASURES: dict[str, tuple[Measure, ...]] = {"ks2": _ks2(), "ks4": _ks4()}


def measure_names(key_stage: str) -> tuple[str, ...]:
    return tuple(m.name for m in MEASURES[key_stage])


def measures_of_kind(key_stage: str, kind: str) -> tuple[Measure, ...]:
    return tuple(m for m in MEASURES[key_stage] if m.kind == kind)


def all_measure_names() -> tuple[str, ...]:
    """Every measure name of every key stage, KS2's first, each once."""
    names: list[str] = []
    for measures in MEASURES.values():
        names += [m.name for m in measures if m.name not in names]
    return tuple(names)
