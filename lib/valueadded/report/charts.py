"""The report's charts: matplotlib figures rendered to inline SVG.

Each function takes the figures `summaries.py` computes and returns a `Chart`: the SVG
markup (no external resource: dense point clouds are embedded as a PNG inside the SVG),
a short alternative text and a caption. Figures are built with `matplotlib.figure.Figure`
directly, never pyplot, so nothing global is touched and no display is needed.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from valueadded.report.summaries import ProgressDistribution, funnel_points, quadrant_points, trust_comparison

# Text stays text (the browser's sans-serif), which keeps the SVG small; ids are stable.
STYLE = {
    "svg.fonttype": "none",
    "svg.hashsalt": "valueadded-report",
    "font.family": "sans-serif",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#dddddd",
    "grid.linewidth": 0.6,
}
RASTER_DPI = 120  # resolution of the embedded point clouds
PANEL_WIDTH, PANEL_HEIGHT = 3.6, 2.7  # inches
BLUE, ORANGE, GREY, RED, GREEN = "#1f5f99", "#d9822b", "#9a9a9a", "#b2182b", "#1a9850"
QUADRANT_COLOURS = {
    "high_attainment_high_progress": GREEN,
    "low_attainment_high_progress": BLUE,
    "high_attainment_low_progress": ORANGE,
    "low_attainment_low_progress": RED,
}


@dataclass(frozen=True)
class Chart:
    """A rendered chart: `key` (its element id), `svg` markup, `alt` text and `caption`."""

    key: str
    title: str
    svg: str
    alt: str
    caption: str


def _panels(count: int, columns: int = 3) -> tuple[Figure, list]:
    columns = max(1, min(columns, count))
    rows = max(1, math.ceil(count / columns))
    figure = Figure(figsize=(PANEL_WIDTH * columns, PANEL_HEIGHT * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel().tolist()
    for spare in axes[count:]:
        spare.set_visible(False)
    return figure, axes[:count]


def _svg(figure: Figure, key: str, alt: str) -> str:
    """The figure as an <svg> element: no XML prolog, labelled for screen readers."""
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", dpi=RASTER_DPI, metadata={"Date": None, "Creator": None})
    markup = buffer.getvalue()
    markup = markup[markup.index("<svg"):]
    markup = re.sub(r"\s*<metadata>.*?</metadata>", "", markup, count=1, flags=re.DOTALL)  # matplotlib's RDF block
    escaped = alt.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
    return re.sub(r"^<svg ", f'<svg role="img" aria-label="{escaped}" id="svg-{key}" ', markup, count=1)


def _render(key: str, title: str, figure: Figure, alt: str, caption: str) -> Chart:
    return Chart(key=key, title=title, svg=_svg(figure, key, alt), alt=alt, caption=caption)


def _label(name: str) -> str:
    return name.replace("_", " ")


def _empty(axes, message: str) -> None:
    axes.text(0.5, 0.5, message, ha="center", va="center", transform=axes.transAxes, color=GREY)
    axes.set_xticks([])
    axes.set_yticks([])


def estimates_chart(estimates: pd.DataFrame, subjects: list[str]) -> Chart:
    """National estimate by prior attainment group, one panel per subject."""
    with matplotlib.rc_context(STYLE):
        figure, axes = _panels(len(subjects))
        withheld = 0
        for ax, subject in zip(axes, subjects):
            rows = estimates[estimates.subject == subject].sort_values("prior_attainment_group")
            shown = rows[~rows.suppressed & rows.estimate.notna()]
            withheld += int(rows.suppressed.sum())
            ax.plot(shown.prior_attainment_group, shown.estimate, marker="o", markersize=2.5, color=BLUE, linewidth=1.2)
            if shown.outcome_sd.notna().any():
                ax.fill_between(shown.prior_attainment_group, shown.estimate - shown.outcome_sd,
                                shown.estimate + shown.outcome_sd, color=BLUE, alpha=0.12, linewidth=0)
            ax.set_title(_label(subject))
            ax.set_xlabel("prior attainment group")
            ax.set_ylabel("estimate")
        sources = ", ".join(sorted(estimates.source.unique()))
        alt = (f"Line charts of the national estimate against prior attainment group for {len(subjects)} subject(s); "
               f"estimates from {sources}; {withheld} group(s) withheld.")
        caption = (f"The mean outcome of each prior attainment group (the national estimate pupils are measured "
                   f"against), with a band of one outcome standard deviation where it is known. Source: {sources}. "
                   f"{withheld} group(s) rest on fewer pupils than the minimum and are withheld (not drawn).")
        return _render("national-estimates", "National estimates by prior attainment group", figure, alt, caption)


def progress_chart(distributions: dict[str, ProgressDistribution], subjects: list[str]) -> Chart:
    """Histogram of pupils' adjusted progress, one panel per subject."""
    with matplotlib.rc_context(STYLE):
        figure, axes = _panels(len(subjects))
        for ax, subject in zip(axes, subjects):
            d = distributions[subject]
            ax.stairs(d.counts, d.edges, fill=True, color=BLUE, alpha=0.8)
            ax.axvline(0, color="black", linewidth=0.8)
            ax.set_title(f"{_label(subject)} (n={d.n:,}, SD {d.sd:.2f})")
            ax.set_xlabel("adjusted progress")
            ax.set_ylabel("pupils")
        total = sum(distributions[s].n for s in subjects)
        alt = f"Histograms of pupils' adjusted progress scores in {len(subjects)} subject(s), {total:,} scores in all."
        caption = ("The national distribution of pupil progress (actual minus the group's estimate, after the "
                   "extreme-negative adjustment), every pupil with a progress score. The line marks 0. The table "
                   "below gives the quantiles and how many scores were raised to their group's cap.")
        return _render("progress-distribution", "Distribution of pupil progress", figure, alt, caption)


def funnel_chart(schools: pd.DataFrame, measures: tuple[str, ...]) -> Chart:
    """School progress scores against cohort size with the 95% limits around 0."""
    with matplotlib.rc_context(STYLE):
        figure, axes = _panels(len(measures))
        notes = []
        for ax, measure in zip(axes, measures):
            points, constant = funnel_points(schools, measure)
            ax.set_title(_label(measure))
            if points.empty:
                _empty(ax, "no shown school figures")
                notes.append(f"{_label(measure)}: no schools")
                continue
            colours = points.outside.map({"above": GREEN, "below": RED, "inside": GREY})
            ax.scatter(points.n, points.score, s=5, c=colours.tolist(), alpha=0.5, linewidths=0, rasterized=True)
            sizes = np.linspace(max(points.n.min(), 1), points.n.max(), 200)
            ax.plot(sizes, constant / np.sqrt(sizes), color="black", linewidth=0.9)
            ax.plot(sizes, -constant / np.sqrt(sizes), color="black", linewidth=0.9)
            ax.axhline(0, color="black", linewidth=0.5, linestyle=":")
            ax.set_xlabel("pupils in the measure")
            ax.set_ylabel("school score")
            counts = points.outside.value_counts()
            notes.append(f"{_label(measure)}: {len(points):,} schools, {counts.get('above', 0):,} above and "
                         f"{counts.get('below', 0):,} below the limits")
        alt = "Funnel plots of school progress scores against cohort size with 95% limits: " + "; ".join(notes) + "."
        caption = ("Each point is a school's shown score (figures withheld for small cohorts are not drawn); the "
                   "lines are 0 +/- 1.96 x the national pupil SD / sqrt(pupils), the schools' own 95% intervals, so "
                   "a school outside the funnel is exactly one banded above or below average. " + "; ".join(notes) + ".")
        return _render("funnel", "School scores against cohort size (funnel plot)", figure, alt, caption)


def quadrant_chart(schools: pd.DataFrame, measures: list[str]) -> Chart:
    """Schools' progress against attainment, split at the national figures into quadrants."""
    with matplotlib.rc_context(STYLE):
        figure, axes = _panels(len(measures))
        notes = []
        for ax, measure in zip(axes, measures):
            points, attainment_measure, attainment_line, progress_line = quadrant_points(schools, measure)
            ax.set_title(_label(measure))
            if points.empty:
                _empty(ax, "no shown school figures")
                continue
            ax.scatter(points.attainment, points.progress, s=5, alpha=0.5, linewidths=0, rasterized=True,
                       c=points.quadrant.map(QUADRANT_COLOURS).fillna(GREY).tolist())
            ax.axvline(attainment_line, color="black", linewidth=0.8)
            ax.axhline(progress_line, color="black", linewidth=0.8)
            ax.set_xlabel(_label(attainment_measure))
            ax.set_ylabel(_label(measure))
            notes.append(f"{_label(measure)} against {_label(attainment_measure)}: {len(points):,} schools")
        handles = [Line2D([], [], marker="o", linestyle="", color=c, label=_label(q))
                   for q, c in QUADRANT_COLOURS.items()]
        figure.legend(handles=handles, loc="outside lower center", ncols=2, frameon=False)
        alt = "Scatter plots of school progress against attainment, in quadrants: " + "; ".join(notes) + "."
        caption = ("Each point is a school with both figures shown; the lines are the national figures, and a "
                   "school is high on a measure at or above them (the quadrant in school_measures). Counts per "
                   "quadrant are in the table below.")
        return _render("quadrants", "Attainment against progress", figure, alt, caption)


def trust_chart(trusts: pd.DataFrame, schools: pd.DataFrame, measures: tuple[str, ...]) -> Chart:
    """Each trust's figure with its interval, ranked, over the figures of its counted schools."""
    with matplotlib.rc_context(STYLE):
        figure, axes = _panels(len(measures))
        notes = []
        for ax, measure in zip(axes, measures):
            ranked, members = trust_comparison(trusts, schools, measure)
            ax.set_title(_label(measure))
            if ranked.empty:
                _empty(ax, "no trust with a shown figure")
                notes.append(f"{_label(measure)}: no trusts")
                continue
            ax.scatter(members["rank"], members.score, s=4, color=GREY, alpha=0.5, linewidths=0, rasterized=True,
                       label="counted schools")
            ax.vlines(ranked["rank"], ranked.lower, ranked.upper, color=BLUE, linewidth=0.8, alpha=0.7, rasterized=True)
            ax.scatter(ranked["rank"], ranked.score, s=6, color=BLUE, linewidths=0, rasterized=True, label="trust (95% interval)")
            ax.axhline(0, color="black", linewidth=0.5, linestyle=":")
            ax.set_xlabel("trusts, ranked by their figure")
            ax.set_ylabel("score")
            ax.legend(loc="upper left", frameon=False, fontsize=8)
            notes.append(f"{_label(measure)}: {len(ranked):,} trusts, {len(members):,} counted schools")
        alt = "Trust figures with 95% intervals, ranked, over their schools' figures: " + "; ".join(notes) + "."
        caption = ("Blue: each eligible trust's shown figure and interval (the time-in-trust weighted mean of its "
                   "counted schools' pupils), trusts ordered from lowest to highest. Grey: the shown figures of the "
                   "schools that count towards it, at the trust's rank: the spread within a trust against the "
                   "differences between trusts.")
        return _render("trusts", "Trusts compared with their schools", figure, alt, caption)
