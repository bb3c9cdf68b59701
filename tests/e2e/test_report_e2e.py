"""The release report on the shared release of the generated cohort (tests/conftest.py).

What it reads agrees with the published tables (shown school and trust figures only, the
suppression counts, the reconciliation), the page is self-contained, and it names the run
and the table versions it was read at. The browser test (test_report_browser.py) opens it.
"""

from __future__ import annotations

import re
import shutil

import pytest
from deltalake import DeltaTable

from valueadded.cli import EXIT_BAD_INPUT, main
from valueadded.io.runlog import RunRecord
from valueadded.io.snapshot import find_run
from valueadded.report import build_report, default_report_path
from valueadded.report.data import PUBLISHED_WITH_SUPPRESSION, read_release
from valueadded.report.summaries import HEADLINE_PROGRESS, funnel_points

YEAR = 2024
SECTIONS = ("summary", "estimates", "progress", "funnel", "quadrants", "trusts", "cva", "reconciliation", "suppression", "provenance")
CHARTS = ("national-estimates", "progress-distribution", "funnel", "quadrants", "trusts")

pytestmark = pytest.mark.slow


def _partition(frame, key_stage, stage):
    return frame[(frame.academic_year == YEAR) & (frame.key_stage == key_stage) & (frame.data_stage == stage)]


def _published(generated_release, name, key_stage, stage):
    return _partition(DeltaTable(str(generated_release.output_dir / "published" / name)).to_pandas(), key_stage, stage)


@pytest.fixture(scope="module")
def ks4_data(generated_release):
    output = generated_release.output_dir
    return read_release(output, find_run(output, YEAR, "ks4", "validated"))


def test_report_command_writes_a_self_contained_page(generated_release, tmp_path, capsys):
    target = tmp_path / "ks2.html"
    code = main(["report", "--output", str(generated_release.output_dir), "--year", str(YEAR), "--key-stage", "ks2",
                 "--stage", "unvalidated", "--to", str(target)])
    assert code == 0
    assert str(target.resolve()) in capsys.readouterr().out
    html = target.read_text()
    for section in SECTIONS:
        assert f'<section id="{section}">' in html
    for chart in CHARTS:
        figure = re.search(rf'<figure class="chart" id="chart-{chart}">\s*<svg role="img" aria-label="([^"]+)"', html)
        assert figure, chart
        assert len(figure.group(1)) > 40  # a real description, not a placeholder
    # Nothing to fetch: no script, no stylesheet or image from elsewhere (only SVG namespaces name a URL).
    assert "<script" not in html.lower()
    assert not re.search(r'(?:src|href)="(?!#|data:)', html)
    assert set(re.findall(r"https?://[^\s\"')]+", html)) <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}


def test_report_shows_only_shown_school_and_trust_figures(generated_release, ks4_data):
    schools = _published(generated_release, "school_measures", "ks4", "validated")
    trusts = _published(generated_release, "trust_measures", "ks4", "validated")
    assert not ks4_data.schools.suppressed.any() and ks4_data.schools.score.notna().all()
    assert len(ks4_data.schools) == int((~schools.suppressed).sum())
    assert ks4_data.trusts.eligible.all() and not ks4_data.trusts.suppressed.any()
    assert len(ks4_data.trusts) == int((trusts.eligible & ~trusts.suppressed).sum())
    # The funnel's points outside the limits are exactly the schools banded above or below average.
    for measure in HEADLINE_PROGRESS["ks4"]:
        points, _ = funnel_points(ks4_data.schools, measure)
        shown = schools[(schools.measure == measure) & ~schools.suppressed]
        assert len(points) == len(shown)
        assert (points.outside != "inside").sum() == shown.band.isin(["above", "well_above", "below", "well_below"]).sum()


def test_report_counts_agree_with_the_tables_and_the_run_log(generated_release, ks4_data):
    for schema in PUBLISHED_WITH_SUPPRESSION:
        table = _published(generated_release, schema.name, "ks4", "validated")
        row = ks4_data.suppression.set_index("table").loc[schema.name]
        assert (row["rows"], row["shown"]) == (len(table), int((~table.suppressed).sum()))
        assert row["below_minimum_pupils"] + row["secondary"] == int(table.suppressed.sum())
    counts = ks4_data.run.row_counts
    assert all(check["holds"] for check in counts["reconciliation"].values())
    rejected = _partition(DeltaTable(str(generated_release.output_dir / "restricted" / "rejected_rows")).to_pandas(), "ks4", "validated")
    assert int(ks4_data.rejected["rows"].sum()) == len(rejected) == sum(c["rows_rejected"] for c in counts["inputs"].values())
    assert sum(d.n for d in ks4_data.progress.values()) == int(
        _partition(DeltaTable(str(generated_release.output_dir / "restricted" / "pupil_progress")).to_pandas(), "ks4", "validated")
        .adjusted_progress.notna().sum())


def test_report_names_the_run_and_the_table_versions_it_read(ks4_data):
    html = build_report(ks4_data)
    run = ks4_data.run
    assert run.run_id in html and run.code_version in html
    for name, version in run.table_versions.items():
        assert re.search(rf"<td>{name}</td><td class=\"n\">{version}</td>", html), name
    for model in ks4_data.cva_model.model.unique():
        assert f"<h3>{model} (" in html


def test_report_of_an_unknown_run_or_partition_is_bad_input(generated_release, tmp_path):
    common = ["report", "--output", str(generated_release.output_dir), "--key-stage", "ks2", "--stage", "validated", "--to", str(tmp_path / "r.html")]
    assert main([*common, "--year", str(YEAR), "--run", "no-such-run"]) == EXIT_BAD_INPUT
    assert main([*common, "--year", str(YEAR - 1)]) == EXIT_BAD_INPUT
    other = find_run(generated_release.output_dir, YEAR, "ks4", "validated")["run_id"]
    assert main([*common, "--year", str(YEAR), "--run", other]) == EXIT_BAD_INPUT  # a run of another partition
    assert not (tmp_path / "r.html").exists()


def test_release_report_option_writes_each_runs_report(generated_release, tmp_path, monkeypatch, capsys):
    """`release --report` writes the report of every run it made, at the default path.

    The runs themselves are the shared release's (run_release is replaced by their records),
    so this checks the wiring without releasing again.
    """
    output = tmp_path / "output"
    shutil.copytree(generated_release.output_dir, output)
    records = {}
    for stage in ("unvalidated", "validated"):
        row = find_run(output, YEAR, "ks2", stage)
        record = RunRecord(run_id=row["run_id"], command="", year=YEAR, key_stage="ks2", data_stage=stage, config_json="{}",
                           pseudonym_key_fingerprint=row["pseudonym_key_fingerprint"])
        record.row_counts = {"pupil_results": {"included": 1, "excluded": 0}, "inputs": {}}
        records[stage] = record
    monkeypatch.setattr("valueadded.pipeline.run_release", lambda spark, config, i, o, year, ks, stage, command, key: records[stage])
    code = main(["release", "--input", str(generated_release.input_dir), "--output", str(output), "--year", str(YEAR),
                 "--key-stage", "ks2", "--stage", "both", "--report"])
    assert code == 0
    printed = capsys.readouterr().out
    for stage, record in records.items():
        path = default_report_path(output, YEAR, "ks2", stage)
        assert f"Report: {path.resolve()}" in printed
        assert record.run_id in path.read_text()
