"""The figures behind the report's charts and tables: pure functions of the tables read.

Nothing here reads or writes files; `data.py` reads, `charts.py` draws, `html.py` lays out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from valueadded.rollup.measures import KS2_PROGRESS_SUBJECTS, KS4_SUBJECTS, PROGRESS, measures_of_kind

SUBJECTS = {"ks2": KS2_PROGRESS_SUBJECTS, "ks4": KS4_SUBJECTS}
# The progress measures the funnel and trust charts show: KS2's three subjects; KS4's
# Progress 8 and its English, maths, EBacc and open elements (the EBacc subject areas
# are in the tables).
HEADLINE_PROGRESS = {
    "ks2": tuple(m.name for m in measures_of_kind("ks2", PROGRESS)),
    "ks4": ("progress_8", "progress_english", "progress_maths", "progress_ebacc", "progress_open"),
}
HISTOGRAM_BINS = 60
QUANTILES = (0.01, 0.1, 0.5, 0.9, 0.99)


def ordered_subjects(key_stage: str, present) -> list[str]:
    """The key stage's subjects in their usual order, then any others present, sorted."""
    present = set(present)
    known = [s for s in SUBJECTS.get(key_stage, ()) if s in present]
    return known + sorted(present - set(known))


@dataclass(frozen=True)
class ProgressDistribution:
    """The national distribution of one subject's adjusted progress.

    Attributes:
        n: pupils with a progress score; mean, sd (n - 1), quantiles (QUANTILES -> value).
        capped: pupils whose score was raised to the group's cap (extreme negative).
        counts, edges: histogram of the scores (HISTOGRAM_BINS equal bins, min to max).
    """

    subject: str
    n: int
    mean: float
    sd: float
    quantiles: dict[float, float]
    capped: int
    counts: np.ndarray
    edges: np.ndarray


def progress_distribution(progress: pa.Table) -> dict[str, ProgressDistribution]:
    """Per subject, the distribution of `adjusted_progress` over pupils that have one.

    Args:
        progress: pupil_progress rows (one per pupil per subject) with columns subject,
            adjusted_progress and capped.
    """
    scored = progress.filter(pc.is_valid(progress["adjusted_progress"]))
    out = {}
    for subject in pc.unique(scored["subject"]).to_pylist():
        rows = scored.filter(pc.equal(scored["subject"], subject))
        values = rows["adjusted_progress"].to_numpy()
        counts, edges = np.histogram(values, bins=HISTOGRAM_BINS)
        out[subject] = ProgressDistribution(
            subject=subject, n=len(values), mean=float(values.mean()),
            sd=float(values.std(ddof=1)) if len(values) > 1 else float("nan"),
            quantiles=dict(zip(QUANTILES, np.quantile(values, QUANTILES).tolist())),
            capped=int(pc.sum(rows["capped"]).as_py() or 0), counts=counts, edges=edges,
        )
    return out


def progress_table(distributions: dict[str, ProgressDistribution], key_stage: str) -> pd.DataFrame:
    """One row per subject: pupils, mean, SD, quantiles and pupils capped."""
    rows = []
    for subject in ordered_subjects(key_stage, distributions):
        d = distributions[subject]
        rows.append({"subject": subject, "pupils": d.n, "mean": d.mean, "sd": d.sd,
                     **{f"p{round(q * 100)}": v for q, v in d.quantiles.items()}, "capped": d.capped})
    return pd.DataFrame(rows)


def funnel_points(schools: pd.DataFrame, measure: str) -> tuple[pd.DataFrame, float]:
    """The schools of a funnel plot and the constant of its 95% limits.

    A school's progress interval is score +/- z x SD / sqrt(n) with the national SD of the
    measure, so (upper - score) x sqrt(n) is the same for every school: the funnel's limits
    around 0 are +/- that constant / sqrt(n), and a school lies outside them exactly when
    its interval excludes 0 (bands above, well above, below, well below).

    Args:
        schools: shown school_measures rows (n, score, lower, upper, band).

    Returns:
        The measure's schools (school_id, n, score, band, outside: above, below or
        inside) and the constant (the median over schools, NaN with none).
    """
    rows = schools[(schools.measure == measure) & schools.score.notna() & schools.upper.notna()].copy()
    if rows.empty:
        return rows.assign(outside=pd.Series(dtype=str)), float("nan")
    constant = float(np.median((rows.upper - rows.score) * np.sqrt(rows.n.astype(float))))
    limit = constant / np.sqrt(rows.n.astype(float))
    rows["outside"] = np.select([rows.score > limit, rows.score < -limit], ["above", "below"], "inside")
    return rows[["school_id", "n", "score", "band", "outside"]].reset_index(drop=True), constant


def quadrant_points(schools: pd.DataFrame, measure: str) -> tuple[pd.DataFrame, str | None, float, float]:
    """Schools' progress (y) against the attainment measure their quadrant uses (x).

    Returns:
        Rows of school_id, attainment, progress, quadrant; the attainment measure; and the
        national figures of the attainment and progress measures (the quadrants' lines).
    """
    rows = schools[(schools.measure == measure) & schools.quadrant.notna()]
    if rows.empty:
        return pd.DataFrame(columns=["school_id", "attainment", "progress", "quadrant"]), None, float("nan"), float("nan")
    attainment_measure = rows.quadrant_attainment_measure.iloc[0]
    attainment = schools[schools.measure == attainment_measure][["school_id", "score", "national_score"]]
    merged = rows[["school_id", "score", "quadrant", "national_score"]].merge(
        attainment, on="school_id", how="inner", suffixes=("", "_attainment"), validate="one_to_one"
    )
    points = merged.rename(columns={"score": "progress", "score_attainment": "attainment"})
    return (
        points[["school_id", "attainment", "progress", "quadrant"]].reset_index(drop=True),
        attainment_measure,
        float(attainment.national_score.iloc[0]) if len(attainment) else float("nan"),
        float(rows.national_score.iloc[0]),
    )


def quadrant_counts(schools: pd.DataFrame) -> pd.DataFrame:
    """Schools per quadrant, one row per measure that has quadrants."""
    rows = schools[schools.quadrant.notna()]
    table = rows.pivot_table(index="measure", columns="quadrant", values="school_id", aggfunc="count", fill_value=0)
    return table.reset_index().rename_axis(columns=None)


def trust_comparison(trusts: pd.DataFrame, schools: pd.DataFrame, measure: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Trusts ranked by their figure, and the figures of the schools that count towards them.

    Returns:
        trusts: trust_id, trust_name, rank (1 = lowest score), n, score, lower, upper, band,
        schools_counted; schools: trust_id, rank (the trust's), school_id, score.
    """
    ranked = trusts[(trusts.measure == measure) & trusts.score.notna()].sort_values(["score", "trust_id"])
    ranked = ranked.assign(rank=np.arange(1, len(ranked) + 1))
    members = schools[(schools.measure == measure) & schools.in_trust_figure & schools.score.notna()]
    members = members[["trust_id", "school_id", "score"]].merge(ranked[["trust_id", "rank"]], on="trust_id", how="inner")
    columns = ["trust_id", "trust_name", "rank", "n", "score", "lower", "upper", "band", "schools_counted"]
    return ranked[columns].reset_index(drop=True), members.reset_index(drop=True)


def band_counts(frame: pd.DataFrame, measures) -> pd.DataFrame:
    """Rows per band, one row per measure (schools or trusts with a shown banded figure)."""
    rows = frame[frame.measure.isin(list(measures)) & frame.band.notna()]
    order = ["well_below", "below", "average", "above", "well_above"]
    table = rows.pivot_table(index="measure", columns="band", values="score", aggfunc="count", fill_value=0)
    table = table.reindex(columns=[b for b in order if b in table.columns])
    return table.reindex([m for m in measures if m in table.index]).reset_index().rename_axis(columns=None)


def estimates_table(estimates: pd.DataFrame, key_stage: str) -> pd.DataFrame:
    """National estimates in subject order, then group."""
    order = {s: i for i, s in enumerate(ordered_subjects(key_stage, estimates.subject.unique()))}
    return estimates.sort_values(["subject", "prior_attainment_group"], key=lambda c: c.map(order) if c.name == "subject" else c)


def cva_models(cva_model: pd.DataFrame) -> list[dict]:
    """One entry per CVA model: its summary and its coefficients with 95% intervals.

    Each entry: model, population, spec_file, status, message, and for a fitted model
    sigma2_school, sigma2_pupil, icc (the school share of the variance), reml_criterion,
    n_pupils, n_schools, boundary, converged, gather_seconds, fit_seconds, and
    `coefficients` (term, term_stage, term_mean, estimate, std_error, lower, upper).
    """
    models = []
    for name, rows in cva_model.groupby("model", sort=False):
        first = rows.iloc[0]
        entry = {key: first[key] for key in ("model", "population", "spec_file", "status", "message", "n_pupils", "n_schools")}
        if first.status == "fitted":
            s2u, s2e = float(first.sigma2_school), float(first.sigma2_pupil)
            entry.update({
                "sigma2_school": s2u, "sigma2_pupil": s2e, "icc": s2u / (s2u + s2e) if s2u + s2e > 0 else float("nan"),
                "reml_criterion": float(first.reml_criterion), "boundary": bool(first.boundary),
                "converged": bool(first.converged), "gather_seconds": float(first.gather_seconds),
                "fit_seconds": float(first.fit_seconds),
            })
            terms = rows[["term", "term_stage", "term_mean", "estimate", "std_error"]].copy()
            terms["lower"] = terms.estimate - 1.96 * terms.std_error
            terms["upper"] = terms.estimate + 1.96 * terms.std_error
            entry["coefficients"] = terms.reset_index(drop=True)
        models.append(entry)
    return models


def reconciliation(row_counts: dict) -> dict[str, pd.DataFrame]:
    """The run log's accounting of rows in and out, as tables.

    Returns:
        inputs: per input table, rows in, of the other key stage, in scope, accepted,
        rejected; pupils: pupil table rows by inclusion or exclusion reason; checks: each
        rows in = included + excluded + rejected check and whether it holds; cva: pupils
        by CVA model, and not in a model by reason.
    """
    inputs = pd.DataFrame.from_dict(row_counts.get("inputs", {}), orient="index").rename_axis("table").reset_index()
    pupil_results = row_counts.get("pupil_results", {})
    pupils = pd.DataFrame(sorted(pupil_results.get("by_reason", {}).items()), columns=["reason", "pupils"])
    checks = pd.DataFrame.from_dict(row_counts.get("reconciliation", {}), orient="index").rename_axis("rows of").reset_index()
    cva = row_counts.get("cva", {})
    cva_rows = [(f"in model {name}", m.get("pupils"), m.get("status")) for name, m in cva.get("models", {}).items()]
    cva_rows += [(f"not in a model: {reason}", n, None) for reason, n in cva.get("not_in_a_model", {}).items()]
    return {
        "inputs": inputs,
        "pupils": pupils,
        "checks": checks,
        "cva": pd.DataFrame(cva_rows, columns=["pupils", "count", "status"]),
    }
