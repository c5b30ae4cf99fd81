"""The HTML report of a simulated run in headless Chromium: layout at 1280 and 800 px, print."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By

from abplatform.config import load_experiment_text
from abplatform.storage.db import open_database
from reports.analysis import analyze
from reports.render import render_report
from simulator.runner import simulate
from tests.browser import print_pdf, set_viewport_width

pytestmark = pytest.mark.slow

HOSTILE = "<script>document.title='owned'</script><img src=x onerror=alert(1)> & <b>bold</b>"
EXPERIMENT = f"""
key: scorecard_sim
description: "experiment {HOSTILE}"
variants:
  - {{key: control, weight: 0.34, strategy: {{kind: popularity}}, description: "variant {HOSTILE}"}}
  - {{key: treatment, weight: 0.33, strategy: {{kind: random}}}}
  - {{key: per_cat, weight: 0.33, strategy: {{kind: popularity, params: {{per_category: true}}}}}}
metrics:
  - {{name: purchase_rate, type: proportion, event: purchase, description: "metric {HOSTILE}"}}
  - {{name: revenue, type: mean, event: purchase, value: sum}}
  - {{name: ctr, type: ratio, numerator: {{event: click}}, denominator: {{event: impression}}}}
analysis: {{guardrails: [ctr]}}
simulation: {{users: 600, days: 2, items: 150, slate_size: 5, seed: 3}}
"""
METRICS = ("purchase_rate", "revenue", "ctr")
TREATMENTS = ("treatment", "per_cat")


@pytest.fixture(scope="module")
def report_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A report rendered from a real simulated run in SQLite, as a file:// URL."""
    folder = tmp_path_factory.mktemp("scorecard")
    engine = open_database(f"sqlite:///{folder / 'run.db'}")
    simulate(engine, load_experiment_text(EXPERIMENT))
    page = folder / "report.html"
    page.write_text(render_report(analyze(engine, "scorecard_sim")), encoding="utf-8")
    engine.dispose()
    yield page.as_uri()


@pytest.mark.parametrize("width", [1280, 800])
def test_layout_fits_the_width(
    chromium: WebDriver, report_url: str, tmp_path: Path, width: int
) -> None:
    inner = set_viewport_width(chromium, width)
    chromium.get(report_url)
    shot = tmp_path / f"report-{width}.png"
    assert chromium.save_screenshot(str(shot)), shot
    where = f"(width {width}, screenshot {shot})"
    assert inner == width, where
    scroll = chromium.execute_script("return document.documentElement.scrollWidth")
    assert scroll <= chromium.execute_script("return window.innerWidth"), f"scrolls {where}"
    # No table scrolls sideways inside its own box either.
    wide = chromium.execute_script(
        "return Array.from(document.querySelectorAll('.scroll, table'))"
        ".filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.outerHTML.slice(0, 80))"
    )
    assert wide == [], f"{wide} {where}"
    # The scorecard is the first section, one row per metric and treatment variant.
    first = chromium.find_element(By.CSS_SELECTOR, "main section")
    assert first.get_attribute("id") == "scorecard", where
    rows = first.find_elements(By.CSS_SELECTOR, "tbody tr.scorecard-row")
    pairs = [(r.get_attribute("data-metric"), r.get_attribute("data-variant")) for r in rows]
    assert sorted(pairs) == sorted((m, v) for m in METRICS for v in TREATMENTS), where
    assert [p[0] for p in pairs][-2:] == ["ctr", "ctr"], f"guardrail rows last {where}"
    # Every "Adjusted p" header (scorecard and each metric's table) lies inside the viewport.
    headers = [
        h for h in chromium.find_elements(By.TAG_NAME, "th") if h.text.strip() == "Adjusted p"
    ]
    assert len(headers) == 1 + len(METRICS), where
    for header in headers:
        right = chromium.execute_script("return arguments[0].getBoundingClientRect().right", header)
        assert 0 < right <= width, f"adjusted p column at x = {right} {where}"
    # The bar of each row: interval and point inside the bar, zero marked.
    for row in rows:
        bar = row.find_element(By.CSS_SELECTOR, ".bar")
        box = bar.rect
        for part in bar.find_elements(By.CSS_SELECTOR, ".bar-ci, .bar-point, .bar-zero"):
            centre = part.rect["x"] + part.rect["width"] / 2
            assert box["x"] - 1 <= centre <= box["x"] + box["width"] + 1, where


def test_hostile_text_stays_text(chromium: WebDriver, report_url: str) -> None:
    set_viewport_width(chromium, 1280)
    chromium.get(report_url)
    assert chromium.title == "Experiment report: scorecard_sim"  # no script ran
    body = chromium.find_element(By.TAG_NAME, "body").text
    for where in ("experiment", "variant", "metric"):
        assert f"{where} {HOSTILE}" in body.replace("\n", " ")
    assert chromium.find_elements(By.TAG_NAME, "script") == []
    assert chromium.find_elements(By.TAG_NAME, "img") == []
    assert chromium.find_elements(By.CSS_SELECTOR, "main b") == []


def test_prints_to_pdf(chromium: WebDriver, report_url: str, tmp_path: Path) -> None:
    chromium.get(report_url)
    pdf = print_pdf(chromium)
    path = tmp_path / "report.pdf"
    path.write_bytes(pdf)
    assert pdf.startswith(b"%PDF-") and b"%%EOF" in pdf[-64:], path
    pages = pdf.count(b"/Type /Page") - pdf.count(b"/Type /Pages")
    assert pages >= 1, path
