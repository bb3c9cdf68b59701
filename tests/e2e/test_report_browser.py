"""The release report in a real browser: headless Chromium (Debian's chromium and
chromium-driver; bin/test installs them) opens the page from disk with the network cut
off, and every chart must be drawn, non-empty, with no console error and nothing loaded
from anywhere but the page itself. A full-page screenshot of each report is kept under
tests/artifacts/report/ (git-ignored) and its path printed.

Without Chromium the test is skipped on a developer's machine and fails in CI (CI=true).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from valueadded.report import write_report

YEAR = 2024
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "report"
CHARTS = ("national-estimates", "progress-distribution", "funnel", "quadrants", "trusts")
WIDTH = 1280

pytestmark = pytest.mark.slow


def _require_chromium() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        message = f"headless Chromium is needed for the report's browser test: {missing} not found (bin/test installs chromium and chromium-driver)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def browser():
    _require_chromium()
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must not look for a driver online
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--hide-scrollbars", f"--window-size={WIDTH},1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    # No network at all: anything the page tried to fetch from elsewhere would fail and log.
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.emulateNetworkConditions",
                           {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
    yield driver
    driver.quit()


@pytest.mark.parametrize("key_stage, stage", [("ks2", "unvalidated"), ("ks4", "validated")])
def test_report_renders_every_chart_without_errors(browser, generated_release, tmp_path, capsys, key_stage, stage):
    page = write_report(generated_release.output_dir, YEAR, key_stage, stage, to=tmp_path / f"report-{key_stage}-{stage}.html")
    browser.get_log("browser")  # drop anything from an earlier page
    browser.get(page.resolve().as_uri())
    assert browser.execute_script("return document.readyState") == "complete"
    assert browser.title.startswith(f"{YEAR} {key_stage.upper()} {stage} release")

    charts = browser.execute_script("""
        return Array.from(document.querySelectorAll('figure.chart')).map(f => {
            const svg = f.querySelector('svg'); const box = svg ? svg.getBoundingClientRect() : null;
            return {id: f.id, label: svg ? svg.getAttribute('aria-label') : null, width: box ? box.width : 0,
                    height: box ? box.height : 0, shapes: svg ? svg.querySelectorAll('path, use, image').length : 0,
                    caption: (f.querySelector('figcaption') || {}).textContent || ''};
        });""")
    assert [c["id"] for c in charts] == [f"chart-{key}" for key in CHARTS]
    for chart in charts:
        assert chart["width"] > 300 and chart["height"] > 150, chart
        assert chart["shapes"] > 20, chart  # axes, lines and marks were drawn
        assert chart["label"] and chart["caption"], chart

    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert [r for r in resources if not r.startswith(("data:", "file:"))] == []
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []

    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(WIDTH, height)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / f"report-{key_stage}-{stage}.png"
    assert browser.save_screenshot(str(screenshot))
    shutil.copyfile(page, ARTIFACTS / page.name)
    with capsys.disabled():  # shown in CI's log, passing or not
        print(f"\nreport screenshot: {screenshot} (page: {ARTIFACTS / page.name})")
