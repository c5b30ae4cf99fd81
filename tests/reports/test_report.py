"""Tests of the HTML report and the terminal table rendered from a real analysis."""

from __future__ import annotations

import dataclasses
import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console
from sqlalchemy import Engine, select

from abplatform.storage import models as m
from abplatform.storage.db import open_database
from reports.analysis import analyze
from reports.charts import lift_chart
from reports.formatting import (
    format_diff,
    format_lift,
    format_number,
    format_p_value,
    format_percent,
)
from reports.render import render_report
from reports.results import (
    AnalysisResult,
    ComparisonResult,
    MetricResult,
    SrmSummary,
    VariantEstimate,
)
from reports.table import print_table
from tests.factories import TagChecker, add_run, seed_random_experiment

GROUND_TRUTH = {
    "metrics": {
        "ctr": {"control": 0.0812, "treatment": 0.0934, "other": 0.0771},
        "clicks_per_user": {"control": 0.8, "treatment": 0.92, "other": 0.76},
    }
}


def parse(page: str) -> TagChecker:
    """Parse `page`, asserting every element is closed in order."""
    checker = TagChecker()
    checker.feed(page)
    checker.close()
    assert checker.problems == []
    assert checker.stack == []
    return checker


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """A SQLite database with a seeded random experiment and a completed run."""
    path: Path = tmp_path_factory.mktemp("report") / "report.db"
    eng = open_database(f"sqlite:///{path}")
    seed_random_experiment(eng, key="random")
    with eng.connect() as conn:
        experiment_id = conn.execute(
            select(m.Experiment.id).where(m.Experiment.key == "random")
        ).scalar_one()
    add_run(eng, experiment_id, "completed", GROUND_TRUTH)
    yield eng
    eng.dispose()


@pytest.fixture(scope="module")
def result(engine: Engine) -> AnalysisResult:
    """The analysis of the seeded experiment."""
    return analyze(engine, "random")


def with_srm(result: AnalysisResult, mismatch: bool) -> AnalysisResult:
    """The same result with the SRM flag forced."""
    srm = dataclasses.replace(result.srm, mismatch=mismatch, p_value=1e-6 if mismatch else 0.5)
    return dataclasses.replace(result, srm=srm)


def test_report_is_well_formed(result: AnalysisResult) -> None:
    page = render_report(result)
    assert page.startswith("<!DOCTYPE html>")
    checker = parse(page)
    tags = [tag for tag, _ in checker.start_tags]
    assert tags.count("html") == tags.count("body") == tags.count("head") == 1
    assert "<h1>random</h1>" in page
    assert "random experiment" in page  # the description


def test_report_is_self_contained(result: AnalysisResult) -> None:
    page = render_report(result)
    checker = parse(page)
    assert "http://" not in page
    assert "https://" not in page
    assert "<script" not in page
    assert "<link" not in page
    assert "@import" not in page
    assert "url(" not in page
    assert "<style>" in page  # the CSS is inlined
    for tag, attrs in checker.start_tags:
        assert "src" not in attrs, tag
        assert (attrs.get("href") or "#").startswith("#"), tag  # in-page links only


def test_description_is_escaped(result: AnalysisResult) -> None:
    evil = "<script>alert(1)</script>"
    page = render_report(
        dataclasses.replace(result, description=evil, warnings=(f"odd variant {evil}",))
    )
    parse(page)
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("&lt;script&gt;") == 2


def test_srm_banner_only_on_mismatch(result: AnalysisResult) -> None:
    fine = render_report(with_srm(result, mismatch=False))
    assert 'class="srm-alert"' not in fine
    assert "Sample ratio mismatch" not in fine
    assert "Sample ratio OK (p = 0.50)" in fine

    bad = render_report(with_srm(result, mismatch=True))
    parse(bad)
    assert bad.count('class="srm-alert"') == 1
    assert "Sample ratio mismatch" in bad
    assert "p &lt; 0.001" in bad
    assert "Sample ratio OK" not in bad


def test_one_chart_per_comparison(result: AnalysisResult) -> None:
    page = render_report(result)
    comparisons = sum(len(mr.comparisons) for mr in result.metrics)
    assert comparisons == 8  # 4 metrics x 2 treatments
    assert page.count("<svg") == comparisons
    assert page.count("</svg>") == comparisons


def test_ground_truth_shown_when_present(result: AnalysisResult) -> None:
    page = render_report(result)
    # Two metrics have ground truth: a column in their tables, and one diamond per comparison.
    assert page.count('<th class="num">Ground truth</th>') == 2
    assert page.count('<polygon class="truth"') == 4
    assert "0.09340" in page  # ctr truth of treatment, formatted
    assert f"true lift {format_lift(0.0934 / 0.0812 - 1)}" in page

    stripped = dataclasses.replace(
        result,
        metrics=tuple(dataclasses.replace(mr, ground_truth=None) for mr in result.metrics),
    )
    page = render_report(stripped)
    assert "Ground truth" not in page
    assert '<polygon class="truth"' not in page
    assert "true lift" not in page
    assert "diamond" not in page


def test_verdicts_in_words(result: AnalysisResult) -> None:
    page = render_report(result)
    verdicts = re.findall(r'<span class="verdict [a-z]+">([a-z ]+)</span>', page)
    expected = []
    for mr in result.metrics:
        expected.append("baseline")
        expected += ["significant" if c.significant else "not significant" for c in mr.comparisons]
        expected += ["significant" if c.significant else "not significant" for c in mr.comparisons]
    assert sorted(verdicts) == sorted(expected)
    assert "significant" in verdicts  # the seeded 15% click lift is found


def _degenerate_result() -> AnalysisResult:
    """A result full of missing values, as from tiny or empty variants."""
    empty = VariantEstimate("treatment", 0, None, None, "needs at least 2 units (got 0)")
    cmp = ComparisonResult("treatment", "control", None, None, None, None, None, False, "n/a")
    metric = MetricResult(
        "ctr",
        "ratio",
        (VariantEstimate("control", 1, 0.5, None, "needs at least 2 units (got 1)"), empty),
        (cmp,),
        None,
    )
    return AnalysisResult(
        experiment="tiny",
        description="",
        control="control",
        alpha=0.1,
        units={"control": 1, "treatment": 0},
        excluded_units={"multiple_variants": 3},
        srm=SrmSummary(0.32, 1.0, False, {"control": 1, "treatment": 0}, {"control": 0.5}),
        metrics=(metric,),
        run=None,
        warnings=("no units in variant(s): treatment",),
    )


def test_degenerate_result_renders() -> None:
    page = render_report(_degenerate_result())
    parse(page)
    assert page.count("<svg") == 1
    assert "relative lift not available" in page
    assert "not testable" in page
    assert "90% confidence intervals" in page
    assert "needs at least 2 units (got 1)" in page
    assert "3 units saw more than one variant" in page
    assert "no units in variant(s): treatment" in page


def test_lift_chart_geometry() -> None:
    chart = lift_chart(0.10, (0.02, 0.18), 0.12, True, "t")
    assert chart.tone == "up"
    assert chart.x_zero is not None and chart.x_lo is not None and chart.x_hi is not None
    assert chart.x_point is not None and chart.x_truth is not None
    assert chart.x_min <= chart.x_zero < chart.x_lo < chart.x_point < chart.x_truth
    assert chart.x_truth < chart.x_hi <= chart.x_max
    # The point sits in the middle of a symmetric interval.
    assert chart.x_point == pytest.approx((chart.x_lo + chart.x_hi) / 2, abs=0.1)

    down = lift_chart(-0.2, (-0.3, -0.1), None, True, "t")
    assert down.tone == "down"
    assert down.x_truth is None
    assert down.x_lo is not None and down.x_zero is not None and down.x_lo < down.x_zero

    missing = lift_chart(None, None, None, False, "t")
    assert missing.x_point is None and missing.x_lo is None
    assert missing.x_zero is not None


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.0004, "< 0.001"), (0.0012, "0.001"), (0.0496, "0.050"), (0.23, "0.23"), (None, "—")],
)
def test_format_p_value(value: float | None, text: str) -> None:
    assert format_p_value(value) == text


def test_number_formats() -> None:
    assert format_number(4 / 3) == "1.333"
    assert format_number(12345.6) == "12,346"
    assert format_number(0.0321) == "0.03210"
    assert format_number(float("nan")) == "—"
    assert format_percent(0.0345) == "3.45%"
    assert format_lift(0.031) == "+3.1%"
    assert format_lift(-0.0004) == "-0.040%"
    assert format_diff("proportion", 0.0052) == "+0.52 pp"
    assert format_diff("mean", -0.25) == "-0.2500"


def test_print_table(result: AnalysisResult) -> None:
    out = io.StringIO()
    print_table(result, Console(file=out, width=200, color_system=None))
    text = out.getvalue()
    for mr in result.metrics:
        assert f"{mr.metric} ({mr.type})" in text
    assert "Sample ratio OK" in text
    assert "not significant" in text
    assert "truth" in text

    out = io.StringIO()
    print_table(with_srm(result, mismatch=True), Console(file=out, width=200, color_system=None))
    assert "SAMPLE RATIO MISMATCH (p < 0.001)" in out.getvalue()


def test_print_table_degenerate() -> None:
    out = io.StringIO()
    print_table(_degenerate_result(), Console(file=out, width=200, color_system=None))
    text = out.getvalue()
    assert "not testable" in text
    assert "control: needs at least 2 units (got 1)" in text
    assert "3 units saw several variants" in text
