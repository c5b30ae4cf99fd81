"""The HTML report and the terminal table show the new statistics in plain language."""

from __future__ import annotations

import io
import re

from rich.console import Console
from sqlalchemy import Engine

from reports.analysis import analyze
from reports.render import render_report
from reports.table import print_table
from tests.factories import seed_world


def test_report_shows_decisions_cuped_and_sequential(engine: Engine) -> None:
    seed_world(engine, "page", "  sequential: true\n  guardrails: [ctr]")
    result = analyze(engine, "page")
    page = render_report(result)
    # Self-contained: no scripts, no external resources.
    assert "<script" not in page and "http://" not in page and "https://" not in page
    decisions = re.findall(r'<span class="decision [a-z]+">([a-z ]+)</span>', page)
    expected = [c.decision for m in result.metrics for c in m.comparisons]
    assert sorted(decisions) == sorted(expected * 2)  # table row + chart caption
    assert "Holm-Bonferroni correction" in page
    assert "sequential testing: results may be checked at any time" in page
    assert page.count("<li>Always-valid 95% interval (safe to check at any time)") == 8
    assert page.count("<li>Smallest effect detectable now") == 8
    assert "Chance to beat control" in page and "Beta-Binomial posterior" in page
    assert "CUPED on: adjusted with each unit&#39;s pre-experiment value" in page
    ratio_cuped = (
        "CUPED on: the ratio&#39;s delta-method linearisation adjusted with each unit&#39;s "
        "pre-experiment numerator (variance"
    )
    assert ratio_cuped in page
    assert '<span class="tag guardrail">guardrail</span>' in page
    assert page.count('<span class="tag guardrail">') == 1

    out = io.StringIO()
    print_table(result, Console(file=out, width=250, color_system=None))
    text = out.getvalue()
    assert "sequential (always-valid) tests; correction: holm" in text
    assert "ctr (ratio) [guardrail]" in text
    assert "always-valid CI" in text and "CUPED: variance -" in text
    for decision in set(expected):
        assert decision in text
